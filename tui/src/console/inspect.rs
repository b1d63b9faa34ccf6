//! The inspect pane's text: a node, service or task laid out for reading
//! (as `docker … inspect --pretty` does), or as JSON.
//!
//! The JSON has the shapes the CLI prints: `shoal node inspect`,
//! `shoal service inspect`, and a row of `shoal service ps --format json`
//! for a task. The CLI builds those in private functions of `cli::node` and
//! `cli::service`; they are mirrored here field for field, so a change to
//! one shape must be made in both places. Counts the console knows better
//! than the object's last event (running and desired replicas) come from
//! the model, as the CLI's come from a fresh read.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use shoal_proto::v1 as pb;

use super::state::Model;
use crate::cli::output::{
    availability_name, capitalize, health_name, human, manager_status_name, node_state_name,
    role_name, short, task_state_name, update_state_name,
};

/// What the pane shows: the id of a node, service or task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Node(String),
    Service(String),
    Task(String),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Node(_) => "node",
            Object::Service(_) => "service",
            Object::Task(_) => "task",
        }
    }

    /// The name an operator knows it by: hostname, service name,
    /// `service.slot`.
    pub fn name(&self, model: &Model) -> String {
        match self {
            Object::Node(id) => model.hostname(id),
            Object::Service(id) => model
                .services
                .get(id)
                .and_then(|s| s.spec.as_ref())
                .map_or_else(|| short(id).to_string(), |s| s.name.clone()),
            Object::Task(id) => model
                .task(id)
                .map_or_else(|| short(id).to_string(), |t| task_name(model, t)),
        }
    }
}

/// The pane's lines; one line saying so when the object is gone.
pub fn lines(model: &Model, object: &Object, json: bool, now_ms: i64) -> Vec<String> {
    let text = if json {
        to_json(model, object).map(|value| {
            serde_json::to_string_pretty(&value).unwrap_or_else(|e| format!("(not JSON: {e})"))
        })
    } else {
        pretty(model, object, now_ms)
    };
    match text {
        Some(text) => text.lines().map(str::to_string).collect(),
        None => vec![format!(
            "This {} is gone: it was removed from the cluster. Esc goes back.",
            object.kind()
        )],
    }
}

pub fn to_json(model: &Model, object: &Object) -> Option<Value> {
    match object {
        Object::Node(id) => model.nodes.get(id).map(node_json),
        Object::Service(id) => model.services.get(id).map(|s| service_json(model, s)),
        Object::Task(id) => model.task(id).map(|t| task_json(model, t)),
    }
}

fn pretty(model: &Model, object: &Object, now_ms: i64) -> Option<String> {
    let mut out = Pretty::default();
    match object {
        Object::Node(id) => node_pretty(&mut out, model, model.nodes.get(id)?, now_ms),
        Object::Service(id) => service_pretty(&mut out, model, model.services.get(id)?, now_ms),
        Object::Task(id) => task_pretty(&mut out, model, model.task(id)?, now_ms),
    }
    Some(out.text)
}

/// "Key:" in a column wide enough for the longest key, the value after.
#[derive(Default)]
struct Pretty {
    text: String,
}

impl Pretty {
    const KEYS: usize = 20;

    fn section(&mut self, title: &str) {
        self.text.push_str(title);
        self.text.push_str(":\n");
    }

    /// A field; nested fields (`indent` 1) sit under their section.
    fn field(&mut self, indent: usize, key: &str, value: impl std::fmt::Display) {
        let key = format!("{}{key}:", " ".repeat(indent));
        self.text
            .push_str(&format!("{key:<width$} {value}\n", width = Self::KEYS));
    }

    /// A field worth a line only when set.
    fn some(&mut self, indent: usize, key: &str, value: &str) {
        if !value.is_empty() {
            self.field(indent, key, value);
        }
    }

    fn labels(&mut self, title: &str, labels: &std::collections::HashMap<String, String>) {
        if labels.is_empty() {
            return;
        }
        self.section(title);
        // Sorted: a map's own order changes from one event to the next.
        for (k, v) in labels.iter().collect::<BTreeMap<_, _>>() {
            self.text.push_str(&format!(" - {k}={v}\n"));
        }
    }
}

/// What a service's and a task's container spec both show: the image,
/// what runs, and its environment.
fn container_fields(out: &mut Pretty, container: &pb::ContainerSpec) {
    out.field(1, "Image", &container.image);
    out.some(1, "Command", &container.command.join(" "));
    out.some(1, "Args", &container.args.join(" "));
    for env in &container.env {
        out.field(1, "Env", env);
    }
}

fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return String::new();
    }
    let elapsed = Duration::from_millis((now_ms - then_ms).max(0) as u64);
    format!("{} ago", human(elapsed))
}

fn duration(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

// ------------------------------------------------------------------ nodes

/// The shape of `shoal node inspect`.
fn node_json(node: &pb::Node) -> Value {
    crate::cli::node::node_detail(node)
}

/// As `shoal node inspect --pretty`, with the tasks the console counts.
fn node_pretty(out: &mut Pretty, model: &Model, node: &pb::Node, now_ms: i64) {
    let meta = node.meta.clone().unwrap_or_default();
    let spec = node.spec.clone().unwrap_or_default();
    let description = node.description.clone().unwrap_or_default();
    let resources = description.resources.unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    out.field(0, "ID", &meta.id);
    out.field(0, "Hostname", &description.hostname);
    out.field(0, "Joined at", ago(now_ms, meta.created_at_ms));
    out.field(0, "Role", capitalize(role_name(node.role)));
    if spec.desired_role != node.role {
        out.field(1, "Changing to", capitalize(role_name(spec.desired_role)));
    }
    out.section("Status");
    out.field(1, "State", capitalize(node_state_name(status.state)));
    out.some(1, "Message", &status.message);
    out.field(
        1,
        "Availability",
        capitalize(availability_name(spec.availability)),
    );
    out.field(1, "Address", &status.addr);
    out.field(1, "Tasks running", model.running_on(&meta.id));
    if let Some(manager) = manager_status_name(node) {
        out.section("Manager Status");
        if let Some(m) = &node.manager_status {
            out.some(1, "Address", &m.addr);
            out.field(1, "Raft ID", m.raft_id);
            if m.locked {
                out.field(1, "Locked", "yes: unlock it with u");
            }
        }
        out.field(1, "Raft Status", capitalize(manager));
    }
    out.labels("Labels", &spec.labels);
    out.labels("Engine Labels", &description.engine_labels);
    out.section("Platform");
    out.field(1, "Operating System", &description.platform_os);
    out.field(1, "Architecture", &description.platform_arch);
    out.section("Resources");
    out.field(1, "CPUs", resources.nano_cpus as f64 / 1e9);
    out.field(
        1,
        "Memory",
        format!(
            "{:.1} GiB",
            resources.memory_bytes as f64 / (1u64 << 30) as f64
        ),
    );
    out.field(0, "Executor", &description.executor);
    out.field(0, "Agent Version", &description.agent_version);
}

// --------------------------------------------------------------- services

fn mode_name(spec: &pb::ServiceSpec) -> &'static str {
    if spec.mode == pb::ServiceMode::Global as i32 {
        "global"
    } else {
        "replicated"
    }
}

pub fn image_of(spec: &pb::ServiceSpec) -> String {
    spec.task
        .as_ref()
        .and_then(|t| t.container.as_ref())
        .map(|c| c.image.clone())
        .unwrap_or_default()
}

pub fn failure_action_name(value: i32) -> &'static str {
    match pb::FailureAction::try_from(value) {
        Ok(pb::FailureAction::Continue) => "continue",
        Ok(pb::FailureAction::Rollback) => "rollback",
        _ => "pause",
    }
}

pub fn order_name(value: i32) -> &'static str {
    if value == pb::UpdateOrder::StartFirst as i32 {
        "start-first"
    } else {
        "stop-first"
    }
}

fn restart_name(value: i32) -> &'static str {
    match pb::RestartCondition::try_from(value) {
        Ok(pb::RestartCondition::None) => "none",
        Ok(pb::RestartCondition::OnFailure) => "on-failure",
        _ => "any",
    }
}

/// The shape of `shoal service inspect`, with the replica counts the
/// console keeps live.
fn service_json(model: &Model, service: &pb::Service) -> Value {
    let mut json = crate::cli::service::service_detail(service);
    let (running, desired) = model.replicas(service);
    json["replicas_running"] = running.into();
    json["replicas_desired"] = desired.into();
    json
}

/// As `shoal service inspect --pretty`, with labels, restart policy and
/// the update's progress.
fn service_pretty(out: &mut Pretty, model: &Model, service: &pb::Service, now_ms: i64) {
    let meta = service.meta.clone().unwrap_or_default();
    let spec = service.spec.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let container = task.container.clone().unwrap_or_default();
    let (running, desired) = model.replicas(service);
    out.field(0, "ID", &meta.id);
    out.field(0, "Name", &spec.name);
    out.field(0, "Created", ago(now_ms, meta.created_at_ms));
    out.field(0, "Updated", ago(now_ms, meta.updated_at_ms));
    out.labels("Labels", &spec.labels);
    out.field(0, "Mode", capitalize(mode_name(&spec)));
    if spec.mode != pb::ServiceMode::Global as i32 {
        out.field(1, "Replicas", spec.replicas);
    }
    out.field(0, "Running", format!("{running}/{desired}"));
    if let Some(progress) = model.update_progress(service) {
        let status = service.update_status.clone().unwrap_or_default();
        out.section("UpdateStatus");
        out.field(
            1,
            "State",
            update_state_name(progress.state).replace('_', " "),
        );
        out.field(
            1,
            "Progress",
            format!("{}/{} updated", progress.updated, progress.total),
        );
        if status.started_at_ms > 0 {
            out.field(1, "Started", ago(now_ms, status.started_at_ms));
        }
        if status.completed_at_ms > 0 {
            out.field(1, "Completed", ago(now_ms, status.completed_at_ms));
        }
        out.some(1, "Message", &progress.message);
    }
    for (title, config) in [
        ("UpdateConfig", spec.update),
        ("RollbackConfig", spec.rollback),
    ] {
        let config = config.unwrap_or_default();
        out.section(title);
        if config.parallelism == 0 {
            out.field(1, "Parallelism", "0 (all at once)");
        } else {
            out.field(1, "Parallelism", config.parallelism);
        }
        out.field(1, "Delay", duration(config.delay_ms));
        out.field(1, "On failure", failure_action_name(config.failure_action));
        out.field(1, "Monitoring Period", duration(config.monitor_ms));
        out.field(1, "Max failure ratio", config.max_failure_ratio);
        out.field(1, "Update order", order_name(config.order));
    }
    out.section("ContainerSpec");
    container_fields(out, &container);
    out.some(1, "Dir", &container.dir);
    out.some(1, "User", &container.user);
    if let Some(health) = &container.healthcheck {
        out.field(1, "Healthcheck", health.test.join(" "));
        out.field(
            1,
            " Interval",
            format!(
                "{}, timeout {}, {} retries",
                duration(health.interval_ms),
                duration(health.timeout_ms),
                health.retries
            ),
        );
    }
    out.labels(" Labels", &container.labels);
    let restart = task.restart.unwrap_or_default();
    out.section("RestartPolicy");
    out.field(1, "Condition", restart_name(restart.condition));
    out.field(1, "Delay", duration(restart.delay_ms));
    if restart.max_attempts > 0 {
        out.field(1, "Max attempts", restart.max_attempts);
    }
    let placement = task.placement.unwrap_or_default();
    if !placement.constraints.is_empty()
        || !placement.preferences.is_empty()
        || placement.max_replicas_per_node > 0
    {
        out.section("Placement");
        for c in &placement.constraints {
            out.field(1, "Constraint", c);
        }
        for p in &placement.preferences {
            out.field(1, "Spread", &p.spread);
        }
        if placement.max_replicas_per_node > 0 {
            out.field(1, "Max per node", placement.max_replicas_per_node);
        }
    }
    if let Some(previous) = &service.previous_spec {
        out.field(0, "Previous image", image_of(previous));
    }
}

// ------------------------------------------------------------------ tasks

/// `service.slot`, or `service.node` for a global task (as `service ps`).
fn task_name(model: &Model, task: &pb::Task) -> String {
    if task.slot > 0 {
        format!("{}.{}", task.service_name, task.slot)
    } else {
        format!("{}.{}", task.service_name, model.hostname(&task.node_id))
    }
}

fn hostname(model: &Model, task: &pb::Task) -> String {
    if !task.node_hostname.is_empty() {
        task.node_hostname.clone()
    } else if task.node_id.is_empty() {
        String::new()
    } else {
        model.hostname(&task.node_id)
    }
}

/// The shape of a row of `shoal service ps --format json`; the node's
/// name comes from the console's model (watched tasks do not carry it).
fn task_json(model: &Model, task: &pb::Task) -> Value {
    let mut json = crate::cli::service::task_row(task);
    json["node"] = hostname(model, task).into();
    json
}

fn task_pretty(out: &mut Pretty, model: &Model, task: &pb::Task, now_ms: i64) {
    let meta = task.meta.clone().unwrap_or_default();
    let status = task.status.clone().unwrap_or_default();
    let container = task
        .spec
        .as_ref()
        .and_then(|s| s.container.clone())
        .unwrap_or_default();
    out.field(0, "ID", &meta.id);
    out.field(0, "Name", task_name(model, task));
    out.field(0, "Service", &task.service_name);
    if task.slot > 0 {
        out.field(0, "Slot", task.slot);
    }
    out.field(0, "Node", hostname(model, task));
    out.field(0, "Created", ago(now_ms, meta.created_at_ms));
    out.field(
        0,
        "Desired State",
        capitalize(task_state_name(task.desired_state)),
    );
    out.section("Status");
    out.field(
        1,
        "State",
        format!(
            "{} {}",
            capitalize(task_state_name(status.state)),
            ago(now_ms, status.timestamp_ms)
        ),
    );
    out.some(1, "Message", &status.message);
    out.some(1, "Error", &status.err);
    if status.has_exit_code {
        out.field(1, "Exit code", status.exit_code);
    }
    if let Some(health) = health_name(status.health) {
        out.field(1, "Health", capitalize(health));
    }
    out.some(1, "Container ID", short(&status.container_id));
    if status.pid > 0 {
        out.field(1, "PID", status.pid);
    }
    out.section("Spec");
    container_fields(out, &container);
    out.field(1, "Spec version", task.spec_version);
}
