//! Output shapes shared by the commands: aligned tables, JSON, and the
//! names and ages operators read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_proto::v1 as pb;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// A table printed with columns aligned to their widest cell, as Docker
/// prints them.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < row.len() {
                    let pad = widths[c] - cell.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The 12-character form of an id.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// "3 minutes ago", as `docker service ps` says it.
pub fn ago(time_ms: i64) -> String {
    if time_ms <= 0 {
        return String::new();
    }
    let elapsed = Duration::from_millis((now_ms() - time_ms).max(0) as u64);
    format!("{} ago", human(elapsed))
}

/// The largest unit that fits: "about a minute", "2 hours".
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "about a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "about an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

pub fn role_name(role: i32) -> &'static str {
    match pb::NodeRole::try_from(role) {
        Ok(pb::NodeRole::Manager) => "manager",
        _ => "worker",
    }
}

pub fn availability_name(value: i32) -> &'static str {
    match pb::NodeAvailability::try_from(value) {
        Ok(pb::NodeAvailability::Pause) => "pause",
        Ok(pb::NodeAvailability::Drain) => "drain",
        _ => "active",
    }
}

pub fn node_state_name(value: i32) -> &'static str {
    match pb::NodeState::try_from(value) {
        Ok(pb::NodeState::Ready) => "ready",
        Ok(pb::NodeState::Down) => "down",
        Ok(pb::NodeState::Disconnected) => "disconnected",
        _ => "unknown",
    }
}

/// Leader / Reachable / Unreachable, or None for workers.
pub fn manager_status_name(node: &pb::Node) -> Option<&'static str> {
    if role_name(node.role) != "manager" {
        return None;
    }
    let status = node.manager_status.as_ref()?;
    Some(if status.leader {
        "leader"
    } else {
        match pb::Reachability::try_from(status.reachability) {
            Ok(pb::Reachability::Reachable) => "reachable",
            Ok(pb::Reachability::Unreachable) => "unreachable",
            _ => "unknown",
        }
    })
}

pub fn task_state_name(value: i32) -> &'static str {
    use pb::TaskState as S;
    match S::try_from(value) {
        Ok(S::New) => "new",
        Ok(S::Pending) => "pending",
        Ok(S::Assigned) => "assigned",
        Ok(S::Accepted) => "accepted",
        Ok(S::Preparing) => "preparing",
        Ok(S::Starting) => "starting",
        Ok(S::Running) => "running",
        Ok(S::Complete) => "complete",
        Ok(S::Shutdown) => "shutdown",
        Ok(S::Failed) => "failed",
        Ok(S::Rejected) => "rejected",
        Ok(S::Remove) => "remove",
        Ok(S::Orphaned) => "orphaned",
        Err(_) => "unknown",
    }
}

pub fn update_state_name(value: i32) -> &'static str {
    use pb::UpdateState as U;
    match U::try_from(value) {
        Ok(U::Updating) => "updating",
        Ok(U::Paused) => "paused",
        Ok(U::Completed) => "completed",
        Ok(U::RollbackStarted) => "rollback_started",
        Ok(U::RollbackPaused) => "rollback_paused",
        Ok(U::RollbackCompleted) => "rollback_completed",
        _ => "unknown",
    }
}

pub fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Tells the operator when what they read may be out of date.
pub fn warn_if_stale(read: Option<&pb::ReadInfo>) {
    if let Some(read) = read
        && !read.stale_reason.is_empty()
    {
        eprintln!("Warning: this may be out of date: {}", read.stale_reason);
    }
}

/// `--filter KEY=VALUE` options as Docker reads them: values of one key
/// are alternatives, different keys must all match.
#[derive(Debug, Default)]
pub struct Filters {
    by_key: std::collections::BTreeMap<String, Vec<String>>,
}

impl Filters {
    /// Reads `items`, refusing a key not in `keys` or an item without `=`.
    pub fn parse(items: &[String], keys: &[&str]) -> anyhow::Result<Filters> {
        let mut filters = Filters::default();
        for item in items {
            match item.split_once('=') {
                Some((key, value)) if keys.contains(&key) => filters
                    .by_key
                    .entry(key.to_string())
                    .or_default()
                    .push(value.to_string()),
                _ => anyhow::bail!(
                    "invalid filter {item:?}: use KEY=VALUE with KEY one of {}",
                    keys.join(", ")
                ),
            }
        }
        Ok(filters)
    }

    /// The values given for `key`, in order.
    pub fn values(&self, key: &str) -> &[String] {
        self.by_key.get(key).map_or(&[], Vec::as_slice)
    }

    /// Whether the object passes the filters on `key`: true when none was
    /// given, else when `test` accepts one of their values.
    pub fn allow(&self, key: &str, test: impl Fn(&str) -> bool) -> bool {
        self.by_key
            .get(key)
            .is_none_or(|values| values.iter().any(|v| test(v)))
    }
}

/// Docker's label filter: `KEY` wants the label, `KEY=VALUE` that value.
pub fn has_label(labels: &std::collections::HashMap<String, String>, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((key, value)) => labels.get(key).is_some_and(|v| v == value),
        None => labels.contains_key(filter),
    }
}

/// Parses `K=V` (or `K` meaning an empty value).
pub fn key_value(text: &str) -> (String, String) {
    match text.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (text.to_string(), String::new()),
    }
}

/// Parses durations like `10s`, `1m30s`, `500ms`, and plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?} ({e}); use forms like 10s, 1m30s, 500ms"))
}

/// The health a task reported, when it has a health check.
pub fn health_name(health: i32) -> Option<&'static str> {
    match pb::HealthState::try_from(health) {
        Ok(pb::HealthState::Starting) => Some("starting"),
        Ok(pb::HealthState::Healthy) => Some("healthy"),
        Ok(pb::HealthState::Unhealthy) => Some("unhealthy"),
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_of_one_key_are_alternatives_and_keys_combine() -> anyhow::Result<()> {
        let items = ["role=worker", "name=a", "name=b"].map(String::from);
        let filters = Filters::parse(&items, &["role", "name", "label"])?;
        let passes = |role: &str, name: &str| {
            filters.allow("role", |r| r == role)
                && filters.allow("name", |prefix| name.starts_with(prefix))
                && filters.allow("label", |_| false)
        };
        assert!(passes("worker", "a1") && passes("worker", "b1"));
        assert!(!passes("manager", "a1") && !passes("worker", "c1"));
        let unknown = Filters::parse(&["zone=a".to_string()], &["role"]);
        assert!(unknown.is_err_and(|e| e.to_string().contains("KEY one of role")));
        assert!(Filters::parse(&["role".to_string()], &["role"]).is_err());
        Ok(())
    }

    #[test]
    fn a_label_filter_wants_the_key_or_the_key_and_value() {
        let labels = std::collections::HashMap::from([("zone".to_string(), "a".to_string())]);
        assert!(has_label(&labels, "zone") && has_label(&labels, "zone=a"));
        assert!(!has_label(&labels, "zone=b") && !has_label(&labels, "disk"));
    }

    #[test]
    fn tables_align_on_the_widest_cell() {
        let mut t = Table::new(&["ID", "NAME"]);
        t.row(vec!["abc".into(), "web".into()]);
        t.row(vec!["a".into(), "".into()]);
        assert_eq!(t.render(), "ID    NAME\nabc   web\na\n");
    }

    #[test]
    fn durations_and_ages_read_like_docker() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").unwrap_err().contains("10s"));
        assert_eq!(human(Duration::from_secs(75)), "about a minute");
        assert_eq!(human(Duration::from_secs(600)), "10 minutes");
    }
}
