//! The one place where domain objects and their wire twins meet. Outgoing
//! conversions never carry secrets (CA key, token secrets, unlock key);
//! incoming ones reject unknown enum values with a message naming the field.

use shoal_proto::v1 as pb;

use crate::store::*;

#[derive(Debug, thiserror::Error)]
#[error("invalid {field}: {value} is not a known value; upgrade the client or fix the request")]
pub struct ConvertError {
    pub field: &'static str,
    pub value: i32,
}

fn enum_value<T: TryFrom<i32>>(field: &'static str, value: i32) -> Result<T, ConvertError> {
    T::try_from(value).map_err(|_| ConvertError { field, value })
}

// ------------------------------------------------------------ small enums

impl From<Role> for pb::NodeRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Worker => pb::NodeRole::Worker,
            Role::Manager => pb::NodeRole::Manager,
        }
    }
}

impl TryFrom<pb::NodeRole> for Role {
    type Error = ConvertError;
    fn try_from(role: pb::NodeRole) -> Result<Self, ConvertError> {
        match role {
            pb::NodeRole::Worker => Ok(Role::Worker),
            pb::NodeRole::Manager => Ok(Role::Manager),
            pb::NodeRole::Unspecified => Err(ConvertError {
                field: "role",
                value: 0,
            }),
        }
    }
}

impl From<Availability> for pb::NodeAvailability {
    fn from(a: Availability) -> Self {
        match a {
            Availability::Active => pb::NodeAvailability::Active,
            Availability::Pause => pb::NodeAvailability::Pause,
            Availability::Drain => pb::NodeAvailability::Drain,
        }
    }
}

impl From<pb::NodeAvailability> for Availability {
    fn from(a: pb::NodeAvailability) -> Self {
        match a {
            pb::NodeAvailability::Active => Availability::Active,
            pb::NodeAvailability::Pause => Availability::Pause,
            pb::NodeAvailability::Drain => Availability::Drain,
        }
    }
}

impl From<NodeState> for pb::NodeState {
    fn from(s: NodeState) -> Self {
        match s {
            NodeState::Unknown => pb::NodeState::Unknown,
            NodeState::Down => pb::NodeState::Down,
            NodeState::Ready => pb::NodeState::Ready,
            NodeState::Disconnected => pb::NodeState::Disconnected,
        }
    }
}

impl From<Reachability> for pb::Reachability {
    fn from(r: Reachability) -> Self {
        match r {
            Reachability::Unknown => pb::Reachability::Unknown,
            Reachability::Unreachable => pb::Reachability::Unreachable,
            Reachability::Reachable => pb::Reachability::Reachable,
        }
    }
}

impl From<TaskState> for pb::TaskState {
    fn from(s: TaskState) -> Self {
        match s {
            TaskState::New => pb::TaskState::New,
            TaskState::Pending => pb::TaskState::Pending,
            TaskState::Assigned => pb::TaskState::Assigned,
            TaskState::Accepted => pb::TaskState::Accepted,
            TaskState::Preparing => pb::TaskState::Preparing,
            TaskState::Starting => pb::TaskState::Starting,
            TaskState::Running => pb::TaskState::Running,
            TaskState::Complete => pb::TaskState::Complete,
            TaskState::Shutdown => pb::TaskState::Shutdown,
            TaskState::Failed => pb::TaskState::Failed,
            TaskState::Rejected => pb::TaskState::Rejected,
            TaskState::Remove => pb::TaskState::Remove,
            TaskState::Orphaned => pb::TaskState::Orphaned,
        }
    }
}

impl From<pb::TaskState> for TaskState {
    fn from(s: pb::TaskState) -> Self {
        match s {
            pb::TaskState::New => TaskState::New,
            pb::TaskState::Pending => TaskState::Pending,
            pb::TaskState::Assigned => TaskState::Assigned,
            pb::TaskState::Accepted => TaskState::Accepted,
            pb::TaskState::Preparing => TaskState::Preparing,
            pb::TaskState::Starting => TaskState::Starting,
            pb::TaskState::Running => TaskState::Running,
            pb::TaskState::Complete => TaskState::Complete,
            pb::TaskState::Shutdown => TaskState::Shutdown,
            pb::TaskState::Failed => TaskState::Failed,
            pb::TaskState::Rejected => TaskState::Rejected,
            pb::TaskState::Remove => TaskState::Remove,
            pb::TaskState::Orphaned => TaskState::Orphaned,
        }
    }
}

impl From<Health> for pb::HealthState {
    fn from(h: Health) -> Self {
        match h {
            Health::None => pb::HealthState::None,
            Health::Starting => pb::HealthState::Starting,
            Health::Healthy => pb::HealthState::Healthy,
            Health::Unhealthy => pb::HealthState::Unhealthy,
        }
    }
}

impl From<pb::HealthState> for Health {
    fn from(h: pb::HealthState) -> Self {
        match h {
            pb::HealthState::None => Health::None,
            pb::HealthState::Starting => Health::Starting,
            pb::HealthState::Healthy => Health::Healthy,
            pb::HealthState::Unhealthy => Health::Unhealthy,
        }
    }
}

impl From<UpdateState> for pb::UpdateState {
    fn from(s: UpdateState) -> Self {
        match s {
            UpdateState::Unknown => pb::UpdateState::Unknown,
            UpdateState::Updating => pb::UpdateState::Updating,
            UpdateState::Paused => pb::UpdateState::Paused,
            UpdateState::Completed => pb::UpdateState::Completed,
            UpdateState::RollbackStarted => pb::UpdateState::RollbackStarted,
            UpdateState::RollbackPaused => pb::UpdateState::RollbackPaused,
            UpdateState::RollbackCompleted => pb::UpdateState::RollbackCompleted,
        }
    }
}

// ------------------------------------------------------------------ meta

impl From<&Meta> for pb::Meta {
    fn from(m: &Meta) -> Self {
        pb::Meta {
            id: m.id.clone(),
            version: m.version,
            created_at_ms: m.created_at,
            updated_at_ms: m.updated_at,
        }
    }
}

impl From<&pb::Meta> for Meta {
    fn from(m: &pb::Meta) -> Self {
        Meta {
            id: m.id.clone(),
            version: m.version,
            created_at: m.created_at_ms,
            updated_at: m.updated_at_ms,
        }
    }
}

// ------------------------------------------------------------------ nodes

impl From<Resources> for pb::Resources {
    fn from(r: Resources) -> Self {
        pb::Resources {
            nano_cpus: r.nano_cpus,
            memory_bytes: r.memory_bytes,
        }
    }
}

impl From<&pb::Resources> for Resources {
    fn from(r: &pb::Resources) -> Self {
        Resources {
            nano_cpus: r.nano_cpus,
            memory_bytes: r.memory_bytes,
        }
    }
}

fn resources(r: &Option<pb::Resources>) -> Resources {
    r.as_ref().map(Resources::from).unwrap_or_default()
}

impl From<&NodeSpec> for pb::NodeSpec {
    fn from(s: &NodeSpec) -> Self {
        pb::NodeSpec {
            desired_role: pb::NodeRole::from(s.desired_role) as i32,
            availability: pb::NodeAvailability::from(s.availability) as i32,
            labels: s.labels.clone().into_iter().collect(),
        }
    }
}

impl TryFrom<&pb::NodeSpec> for NodeSpec {
    type Error = ConvertError;
    fn try_from(s: &pb::NodeSpec) -> Result<Self, ConvertError> {
        Ok(NodeSpec {
            desired_role: Role::try_from(enum_value::<pb::NodeRole>(
                "desired_role",
                s.desired_role,
            )?)?,
            availability: enum_value::<pb::NodeAvailability>("availability", s.availability)?
                .into(),
            labels: s.labels.clone().into_iter().collect(),
        })
    }
}

impl From<&NodeDescription> for pb::NodeDescription {
    fn from(d: &NodeDescription) -> Self {
        pb::NodeDescription {
            hostname: d.hostname.clone(),
            platform_os: d.os.clone(),
            platform_arch: d.arch.clone(),
            resources: Some(d.resources.into()),
            engine_labels: d.engine_labels.clone().into_iter().collect(),
            agent_version: d.agent_version.clone(),
            executor: d.executor.clone(),
        }
    }
}

impl From<&pb::NodeDescription> for NodeDescription {
    fn from(d: &pb::NodeDescription) -> Self {
        NodeDescription {
            hostname: d.hostname.clone(),
            os: d.platform_os.clone(),
            arch: d.platform_arch.clone(),
            resources: resources(&d.resources),
            engine_labels: d.engine_labels.clone().into_iter().collect(),
            agent_version: d.agent_version.clone(),
            executor: d.executor.clone(),
        }
    }
}

/// What the serving manager knows beyond the store: who leads, and which
/// managers it can reach right now.
#[derive(Clone, Debug, Default)]
pub struct LiveView {
    pub leader_raft_id: Option<u64>,
}

pub fn node_to_pb(node: &Node, live: &LiveView) -> pb::Node {
    pb::Node {
        meta: Some((&node.meta).into()),
        spec: Some((&node.spec).into()),
        description: Some((&node.description).into()),
        status: Some(pb::NodeStatus {
            state: pb::NodeState::from(node.status.state) as i32,
            message: node.status.message.clone(),
            addr: node.status.addr.clone(),
            timestamp_ms: node.status.timestamp,
        }),
        manager_status: node.manager_status.as_ref().and_then(|m| {
            // A node on its way in or out of raft has a raft id but is not
            // a manager yet (or any more).
            if node.role != Role::Manager {
                return None;
            }
            let leader = live.leader_raft_id == Some(m.raft_id);
            Some(pb::ManagerStatus {
                raft_id: m.raft_id,
                addr: m.addr.clone(),
                leader,
                reachability: if leader {
                    pb::Reachability::Reachable as i32
                } else {
                    pb::Reachability::from(m.reachability) as i32
                },
                locked: m.locked,
            })
        }),
        role: pb::NodeRole::from(node.role) as i32,
    }
}

// ---------------------------------------------------------------- cluster

impl From<&ClusterSpec> for pb::ClusterSpec {
    fn from(s: &ClusterSpec) -> Self {
        pb::ClusterSpec {
            name: s.name.clone(),
            labels: s.labels.clone().into_iter().collect(),
            heartbeat_period_ms: s.heartbeat_period_ms,
            heartbeat_tolerance: s.heartbeat_tolerance,
            task_history_retention: s.task_history_retention,
            node_cert_expiry_s: s.node_cert_expiry_s,
            autolock: s.autolock,
            snapshot_interval: s.snapshot_interval,
        }
    }
}

impl From<&pb::ClusterSpec> for ClusterSpec {
    fn from(s: &pb::ClusterSpec) -> Self {
        ClusterSpec {
            name: s.name.clone(),
            labels: s.labels.clone().into_iter().collect(),
            heartbeat_period_ms: s.heartbeat_period_ms,
            heartbeat_tolerance: s.heartbeat_tolerance,
            task_history_retention: s.task_history_retention,
            node_cert_expiry_s: s.node_cert_expiry_s,
            autolock: s.autolock,
            snapshot_interval: s.snapshot_interval,
        }
    }
}

/// The cluster without its secrets.
impl From<&Cluster> for pb::Cluster {
    fn from(c: &Cluster) -> Self {
        pb::Cluster {
            meta: Some((&c.meta).into()),
            spec: Some((&c.spec).into()),
            root_ca_pem: c.root_ca.cert_pem.clone(),
            root_ca_digest: c.root_ca.digest.clone(),
        }
    }
}

// ---------------------------------------------------------------- services

impl From<&RestartPolicy> for pb::RestartPolicy {
    fn from(p: &RestartPolicy) -> Self {
        pb::RestartPolicy {
            condition: match p.condition {
                RestartCondition::Any => pb::RestartCondition::Any,
                RestartCondition::OnFailure => pb::RestartCondition::OnFailure,
                RestartCondition::None => pb::RestartCondition::None,
            } as i32,
            delay_ms: p.delay_ms,
            max_attempts: p.max_attempts,
            window_ms: p.window_ms,
        }
    }
}

impl TryFrom<&pb::RestartPolicy> for RestartPolicy {
    type Error = ConvertError;
    fn try_from(p: &pb::RestartPolicy) -> Result<Self, ConvertError> {
        Ok(RestartPolicy {
            condition: match enum_value::<pb::RestartCondition>("restart condition", p.condition)? {
                pb::RestartCondition::Any => RestartCondition::Any,
                pb::RestartCondition::OnFailure => RestartCondition::OnFailure,
                pb::RestartCondition::None => RestartCondition::None,
            },
            delay_ms: p.delay_ms,
            max_attempts: p.max_attempts,
            window_ms: p.window_ms,
        })
    }
}

impl From<&HealthConfig> for pb::HealthConfig {
    fn from(h: &HealthConfig) -> Self {
        pb::HealthConfig {
            test: h.test.clone(),
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            retries: h.retries,
            start_period_ms: h.start_period_ms,
        }
    }
}

impl From<&pb::HealthConfig> for HealthConfig {
    fn from(h: &pb::HealthConfig) -> Self {
        HealthConfig {
            test: h.test.clone(),
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            retries: h.retries,
            start_period_ms: h.start_period_ms,
        }
    }
}

impl From<&ContainerSpec> for pb::ContainerSpec {
    fn from(c: &ContainerSpec) -> Self {
        pb::ContainerSpec {
            image: c.image.clone(),
            command: c.command.clone(),
            args: c.args.clone(),
            env: c.env.clone(),
            labels: c.labels.clone().into_iter().collect(),
            dir: c.dir.clone(),
            user: c.user.clone(),
            stop_grace_period_ms: c.stop_grace_period_ms,
            healthcheck: c.healthcheck.as_ref().map(Into::into),
            no_healthcheck: c.no_healthcheck,
        }
    }
}

impl From<&pb::ContainerSpec> for ContainerSpec {
    fn from(c: &pb::ContainerSpec) -> Self {
        ContainerSpec {
            image: c.image.clone(),
            command: c.command.clone(),
            args: c.args.clone(),
            env: c.env.clone(),
            labels: c.labels.clone().into_iter().collect(),
            dir: c.dir.clone(),
            user: c.user.clone(),
            stop_grace_period_ms: c.stop_grace_period_ms,
            healthcheck: c.healthcheck.as_ref().map(Into::into),
            no_healthcheck: c.no_healthcheck,
        }
    }
}

impl From<&Placement> for pb::Placement {
    fn from(p: &Placement) -> Self {
        pb::Placement {
            constraints: p.constraints.clone(),
            preferences: p
                .preferences
                .iter()
                .map(|spread| pb::PlacementPreference {
                    spread: spread.clone(),
                })
                .collect(),
            max_replicas_per_node: p.max_replicas_per_node,
        }
    }
}

impl From<&pb::Placement> for Placement {
    fn from(p: &pb::Placement) -> Self {
        Placement {
            constraints: p.constraints.clone(),
            preferences: p.preferences.iter().map(|p| p.spread.clone()).collect(),
            max_replicas_per_node: p.max_replicas_per_node,
        }
    }
}

impl From<&TaskSpec> for pb::TaskSpec {
    fn from(t: &TaskSpec) -> Self {
        pb::TaskSpec {
            container: Some((&t.container).into()),
            reservations: Some(t.reservations.into()),
            limits: Some(t.limits.into()),
            restart: Some((&t.restart).into()),
            placement: Some((&t.placement).into()),
            force_update: t.force_update,
        }
    }
}

impl TryFrom<&pb::TaskSpec> for TaskSpec {
    type Error = ConvertError;
    fn try_from(t: &pb::TaskSpec) -> Result<Self, ConvertError> {
        Ok(TaskSpec {
            container: t.container.as_ref().map(Into::into).unwrap_or_default(),
            reservations: resources(&t.reservations),
            limits: resources(&t.limits),
            restart: match &t.restart {
                Some(r) => r.try_into()?,
                None => RestartPolicy::default(),
            },
            placement: t.placement.as_ref().map(Into::into).unwrap_or_default(),
            force_update: t.force_update,
        })
    }
}

impl From<&UpdateConfig> for pb::UpdateConfig {
    fn from(u: &UpdateConfig) -> Self {
        pb::UpdateConfig {
            parallelism: u.parallelism,
            delay_ms: u.delay_ms,
            failure_action: match u.failure_action {
                FailureAction::Pause => pb::FailureAction::Pause,
                FailureAction::Continue => pb::FailureAction::Continue,
                FailureAction::Rollback => pb::FailureAction::Rollback,
            } as i32,
            monitor_ms: u.monitor_ms,
            max_failure_ratio: u.max_failure_ratio,
            order: match u.order {
                UpdateOrder::StopFirst => pb::UpdateOrder::StopFirst,
                UpdateOrder::StartFirst => pb::UpdateOrder::StartFirst,
            } as i32,
        }
    }
}

impl TryFrom<&pb::UpdateConfig> for UpdateConfig {
    type Error = ConvertError;
    fn try_from(u: &pb::UpdateConfig) -> Result<Self, ConvertError> {
        Ok(UpdateConfig {
            parallelism: u.parallelism,
            delay_ms: u.delay_ms,
            failure_action: match enum_value::<pb::FailureAction>(
                "update failure action",
                u.failure_action,
            )? {
                pb::FailureAction::Pause => FailureAction::Pause,
                pb::FailureAction::Continue => FailureAction::Continue,
                pb::FailureAction::Rollback => FailureAction::Rollback,
            },
            monitor_ms: u.monitor_ms,
            max_failure_ratio: u.max_failure_ratio,
            order: match enum_value::<pb::UpdateOrder>("update order", u.order)? {
                pb::UpdateOrder::StopFirst => UpdateOrder::StopFirst,
                pb::UpdateOrder::StartFirst => UpdateOrder::StartFirst,
            },
        })
    }
}

impl From<&ServiceSpec> for pb::ServiceSpec {
    fn from(s: &ServiceSpec) -> Self {
        pb::ServiceSpec {
            name: s.name.clone(),
            labels: s.labels.clone().into_iter().collect(),
            task: Some((&s.task).into()),
            mode: match s.mode {
                ServiceMode::Replicated => pb::ServiceMode::Replicated,
                ServiceMode::Global => pb::ServiceMode::Global,
            } as i32,
            replicas: s.replicas,
            update: Some((&s.update).into()),
            rollback: Some((&s.rollback).into()),
        }
    }
}

impl TryFrom<&pb::ServiceSpec> for ServiceSpec {
    type Error = ConvertError;
    fn try_from(s: &pb::ServiceSpec) -> Result<Self, ConvertError> {
        Ok(ServiceSpec {
            name: s.name.clone(),
            labels: s.labels.clone().into_iter().collect(),
            task: match &s.task {
                Some(t) => t.try_into()?,
                None => TaskSpec::default(),
            },
            mode: match enum_value::<pb::ServiceMode>("mode", s.mode)? {
                pb::ServiceMode::Replicated => ServiceMode::Replicated,
                pb::ServiceMode::Global => ServiceMode::Global,
            },
            replicas: s.replicas,
            update: match &s.update {
                Some(u) => u.try_into()?,
                None => UpdateConfig::default(),
            },
            rollback: match &s.rollback {
                Some(u) => u.try_into()?,
                None => UpdateConfig::default(),
            },
        })
    }
}

pub fn service_to_pb(service: &Service, running: u64, desired: u64) -> pb::Service {
    pb::Service {
        meta: Some((&service.meta).into()),
        spec: Some((&service.spec).into()),
        previous_spec: service.previous_spec.as_ref().map(Into::into),
        update_status: service.update_status.as_ref().map(|u| pb::UpdateStatus {
            state: pb::UpdateState::from(u.state) as i32,
            started_at_ms: u.started_at,
            completed_at_ms: u.completed_at,
            message: u.message.clone(),
        }),
        replicas_running: running,
        replicas_desired: desired,
    }
}

// ------------------------------------------------------------------ tasks

impl From<&TaskStatus> for pb::TaskStatus {
    fn from(s: &TaskStatus) -> Self {
        pb::TaskStatus {
            state: pb::TaskState::from(s.state) as i32,
            timestamp_ms: s.timestamp,
            message: s.message.clone(),
            err: s.err.clone(),
            has_exit_code: s.exit_code.is_some(),
            exit_code: s.exit_code.unwrap_or(0),
            container_id: s.container_id.clone(),
            health: pb::HealthState::from(s.health) as i32,
            pid: s.pid,
        }
    }
}

impl TryFrom<&pb::TaskStatus> for TaskStatus {
    type Error = ConvertError;
    fn try_from(s: &pb::TaskStatus) -> Result<Self, ConvertError> {
        Ok(TaskStatus {
            state: enum_value::<pb::TaskState>("task state", s.state)?.into(),
            timestamp: s.timestamp_ms,
            message: s.message.clone(),
            err: s.err.clone(),
            exit_code: s.has_exit_code.then_some(s.exit_code),
            container_id: s.container_id.clone(),
            health: enum_value::<pb::HealthState>("health", s.health)?.into(),
            pid: s.pid,
        })
    }
}

pub fn task_to_pb(task: &Task, node_hostname: &str) -> pb::Task {
    pb::Task {
        meta: Some((&task.meta).into()),
        service_id: task.service_id.clone(),
        service_name: task.service_name.clone(),
        slot: task.slot,
        node_id: task.node_id.clone(),
        spec: Some((&task.spec).into()),
        spec_version: task.spec_version,
        desired_state: pb::TaskState::from(task.desired_state) as i32,
        status: Some((&task.status).into()),
        node_hostname: node_hostname.to_string(),
    }
}

impl TryFrom<&pb::Task> for Task {
    type Error = ConvertError;
    fn try_from(t: &pb::Task) -> Result<Self, ConvertError> {
        Ok(Task {
            meta: t.meta.as_ref().map(Into::into).unwrap_or_default(),
            service_id: t.service_id.clone(),
            service_name: t.service_name.clone(),
            slot: t.slot,
            node_id: t.node_id.clone(),
            spec: match &t.spec {
                Some(s) => s.try_into()?,
                None => TaskSpec::default(),
            },
            spec_version: t.spec_version,
            desired_state: enum_value::<pb::TaskState>("desired state", t.desired_state)?.into(),
            status: match &t.status {
                Some(s) => s.try_into()?,
                None => TaskStatus::default(),
            },
        })
    }
}

// ------------------------------------------------------------------ watch

pub fn object_to_pb(object: &Object, tables: &Tables, live: &LiveView) -> pb::watch_event::Object {
    use pb::watch_event::Object as O;
    match object {
        Object::Node(n) => O::Node(node_to_pb(n, live)),
        Object::Service(s) => {
            let (running, desired) = replica_counts(tables, s);
            O::Service(service_to_pb(s, running, desired))
        }
        Object::Task(t) => O::Task(task_to_pb(t, &hostname_of(tables, &t.node_id))),
        Object::Cluster(c) => O::Cluster(c.as_ref().into()),
    }
}

pub fn old_object_to_pb(object: &Object, tables: &Tables, live: &LiveView) -> pb::watch_event::Old {
    use pb::watch_event::{Object as O, Old};
    match object_to_pb(object, tables, live) {
        O::Node(n) => Old::OldNode(n),
        O::Service(s) => Old::OldService(s),
        O::Task(t) => Old::OldTask(t),
        O::Cluster(c) => Old::OldCluster(c),
    }
}

pub fn hostname_of(tables: &Tables, node_id: &str) -> String {
    tables
        .nodes
        .get(node_id)
        .map(|n| n.description.hostname.clone())
        .unwrap_or_default()
}

/// Running and desired replicas of a service, as `service ls` shows them.
pub fn replica_counts(tables: &Tables, service: &Service) -> (u64, u64) {
    let mut running = 0;
    let mut desired_global = 0;
    for task in tables.tasks_of_service(&service.meta.id) {
        if task.desired_state <= TaskState::Running {
            desired_global += 1;
            if task.status.state == TaskState::Running {
                running += 1;
            }
        }
    }
    let desired = match service.spec.mode {
        ServiceMode::Replicated => service.spec.replicas,
        ServiceMode::Global => desired_global,
    };
    (running, desired)
}

pub fn kind_to_pb(kind: Kind) -> pb::ObjectKind {
    match kind {
        Kind::Node => pb::ObjectKind::Node,
        Kind::Service => pb::ObjectKind::Service,
        Kind::Task => pb::ObjectKind::Task,
        Kind::Cluster => pb::ObjectKind::Cluster,
    }
}

pub fn kind_from_pb(kind: pb::ObjectKind) -> Option<Kind> {
    match kind {
        pb::ObjectKind::Unspecified => None,
        pb::ObjectKind::Node => Some(Kind::Node),
        pb::ObjectKind::Service => Some(Kind::Service),
        pb::ObjectKind::Task => Some(Kind::Task),
        pb::ObjectKind::Cluster => Some(Kind::Cluster),
    }
}

pub fn action_to_pb(action: Action) -> pb::WatchAction {
    match action {
        Action::Create => pb::WatchAction::Create,
        Action::Update => pb::WatchAction::Update,
        Action::Remove => pb::WatchAction::Remove,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_spec_survives_the_wire() {
        let spec = ServiceSpec {
            name: "web".into(),
            mode: ServiceMode::Replicated,
            replicas: 3,
            task: TaskSpec {
                container: ContainerSpec {
                    image: "shoal-test/busybox:1".into(),
                    args: vec!["sleep".into(), "1000".into()],
                    env: vec!["A=1".into()],
                    healthcheck: Some(HealthConfig {
                        test: vec!["CMD".into(), "true".into()],
                        interval_ms: 1000,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                restart: RestartPolicy::default(),
                placement: Placement {
                    constraints: vec!["node.role==worker".into()],
                    preferences: vec!["node.labels.zone".into()],
                    max_replicas_per_node: 2,
                },
                ..Default::default()
            },
            update: UpdateConfig {
                order: UpdateOrder::StartFirst,
                failure_action: FailureAction::Rollback,
                ..Default::default()
            },
            ..Default::default()
        };
        let wire = pb::ServiceSpec::from(&spec);
        assert_eq!(ServiceSpec::try_from(&wire).unwrap(), spec);
    }

    #[test]
    fn unknown_enum_values_are_refused_with_the_field_name() {
        let wire = pb::ServiceSpec {
            mode: 42,
            ..Default::default()
        };
        let err = ServiceSpec::try_from(&wire).unwrap_err();
        assert!(err.to_string().contains("mode"), "{err}");
    }

    #[test]
    fn the_cluster_on_the_wire_carries_no_secrets() {
        let cluster = Cluster {
            root_ca: RootCa {
                cert_pem: "CERT".into(),
                key_pem: "SECRET-KEY".into(),
                digest: "d".into(),
                next: None,
            },
            join_tokens: JoinTokens {
                worker: "SWMTKN-1-secret-w".into(),
                manager: "SWMTKN-1-secret-m".into(),
            },
            ..Default::default()
        };
        let wire = format!("{:?}", pb::Cluster::from(&cluster));
        assert!(!wire.contains("SECRET-KEY") && !wire.contains("secret-w"));
    }
}
