//! Prometheus metrics: counters and latency histograms that the code paths
//! bump as they run, and gauges read from the agent's state when scraped.
//!
//! The counters are process-wide statics: one `shoald` is one node, and a
//! static keeps the hot paths (raft apply, executor calls) free of handles
//! threaded through every constructor. The text endpoint is a few lines of
//! HTTP/1.1 on a plain TCP listener: it answers `GET /metrics` and nothing
//! else, so it needs no web framework.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::node::{Agent, Mode};
use crate::store::objects::{NodeState, TaskState};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        // Buckets are stored per range; Prometheus wants them cumulative.
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// What an executor was asked to do, for its operation counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorOp {
    Prepare,
    Start,
    Wait,
    Stop,
    Remove,
}

impl ExecutorOp {
    const ALL: [ExecutorOp; 5] = [
        ExecutorOp::Prepare,
        ExecutorOp::Start,
        ExecutorOp::Wait,
        ExecutorOp::Stop,
        ExecutorOp::Remove,
    ];

    fn name(self) -> &'static str {
        match self {
            ExecutorOp::Prepare => "prepare",
            ExecutorOp::Start => "start",
            ExecutorOp::Wait => "wait",
            ExecutorOp::Stop => "stop",
            ExecutorOp::Remove => "remove",
        }
    }
}

pub struct Metrics {
    pub leader_changes: AtomicU64,
    pub raft_apply: Histogram,
    /// Appends of entries to a follower that succeeded as openraft's own
    /// call, and those the replication stream had already carried.
    pub raft_appends_called: AtomicU64,
    pub raft_appends_streamed: AtomicU64,
    /// Committed indexes shared with a follower on the replication stream
    /// instead of openraft's heartbeat call.
    pub raft_commits_streamed: AtomicU64,
    /// Append-entries messages this follower took from a leader: calls
    /// (heartbeats among them) and messages of a replication stream.
    pub raft_appends_received_called: AtomicU64,
    pub raft_appends_received_streamed: AtomicU64,
    pub missed_heartbeats: AtomicU64,
    pub placement: Histogram,
    executor_ops: [AtomicU64; ExecutorOp::ALL.len()],
    executor_errors: [AtomicU64; ExecutorOp::ALL.len()],
}

pub static METRICS: Metrics = Metrics {
    leader_changes: AtomicU64::new(0),
    raft_apply: Histogram::new(),
    raft_appends_called: AtomicU64::new(0),
    raft_appends_streamed: AtomicU64::new(0),
    raft_commits_streamed: AtomicU64::new(0),
    raft_appends_received_called: AtomicU64::new(0),
    raft_appends_received_streamed: AtomicU64::new(0),
    missed_heartbeats: AtomicU64::new(0),
    placement: Histogram::new(),
    executor_ops: [const { AtomicU64::new(0) }; ExecutorOp::ALL.len()],
    executor_errors: [const { AtomicU64::new(0) }; ExecutorOp::ALL.len()],
};

impl Metrics {
    /// Counts one executor call and whether it failed; returns the result
    /// untouched so call sites stay one expression.
    pub fn executor<T, E>(&self, op: ExecutorOp, result: Result<T, E>) -> Result<T, E> {
        self.executor_ops[op as usize].fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            self.executor_errors[op as usize].fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

/// A counter family with one label: its HELP and TYPE, then one sample per
/// label value.
fn counter_family(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'static str, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value_name, value) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value_name}\"}} {value}");
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// The whole exposition, in Prometheus text format 0.0.4.
pub async fn render(agent: &Agent) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let m = &METRICS;
    let state = agent
        .with_mode(|mode| match mode {
            Mode::Inactive => "inactive",
            Mode::Locked(_) => "locked",
            Mode::Active(_) => "active",
        })
        .await;
    let _ = writeln!(
        out,
        "# HELP shoal_node_state This node's state (1 for the current one).\n\
         # TYPE shoal_node_state gauge"
    );
    for name in ["inactive", "locked", "active"] {
        let value = u8::from(name == state);
        let _ = writeln!(out, "shoal_node_state{{state=\"{name}\"}} {value}");
    }

    if let Ok(manager) = agent.manager().await {
        let raft = manager.metrics();
        gauge(
            &mut out,
            "shoal_raft_term",
            "Current raft term.",
            raft.current_term,
        );
        let commit = raft.last_applied.map(|id| id.index).unwrap_or(0);
        gauge(
            &mut out,
            "shoal_raft_commit_index",
            "Index of the last raft entry applied to the store.",
            commit,
        );
        let last_log = raft.last_log_index.unwrap_or(0);
        gauge(
            &mut out,
            "shoal_raft_last_log_index",
            "Index of the last entry in this manager's raft log.",
            last_log,
        );
        gauge(
            &mut out,
            "shoal_raft_is_leader",
            "1 while this manager leads the cluster.",
            u8::from(manager.is_leader()),
        );
        let (reachable, voters) = manager.reachable_voters();
        gauge(
            &mut out,
            "shoal_raft_voters",
            "Managers that vote in raft.",
            voters,
        );
        gauge(
            &mut out,
            "shoal_raft_voters_reachable",
            "Voting managers this manager can reach.",
            reachable,
        );
        if let Some(dispatcher) = manager.dispatcher() {
            gauge(
                &mut out,
                "shoal_dispatcher_sessions",
                "Node sessions open on this leader's dispatcher.",
                dispatcher.session_count(),
            );
        }
        let (by_state, nodes) = {
            let tables = manager.store.read();
            let mut by_state = [0u64; TaskState::ALL.len()];
            for task in tables.tasks.iter() {
                by_state[task.status.state as usize] += 1;
            }
            let mut nodes = [0u64; NodeState::ALL.len()];
            for node in tables.nodes.iter() {
                nodes[node.status.state as usize] += 1;
            }
            (by_state, nodes)
        };
        gauge(
            &mut out,
            "shoal_tasks_pending",
            "Tasks waiting for a node.",
            by_state[TaskState::Pending as usize],
        );
        let _ = writeln!(
            out,
            "# HELP shoal_tasks Tasks in the store by current state.\n# TYPE shoal_tasks gauge"
        );
        for state in TaskState::ALL {
            let count = by_state[state as usize];
            let _ = writeln!(out, "shoal_tasks{{state=\"{}\"}} {count}", state.name());
        }
        let _ = writeln!(
            out,
            "# HELP shoal_nodes Nodes in the store by status.\n# TYPE shoal_nodes gauge"
        );
        for state in NodeState::ALL {
            let count = nodes[state as usize];
            let _ = writeln!(out, "shoal_nodes{{status=\"{}\"}} {count}", state.name());
        }
    }

    counter(
        &mut out,
        "shoal_raft_leader_changes_total",
        "Leader changes this manager has seen.",
        m.leader_changes.load(Ordering::Relaxed),
    );
    counter_family(
        &mut out,
        "shoal_raft_appends_total",
        "Entries appended to followers by this leader: \"call\" as a call of its own, \
         \"stream\" already carried by the replication stream.",
        "path",
        [
            ("call", m.raft_appends_called.load(Ordering::Relaxed)),
            ("stream", m.raft_appends_streamed.load(Ordering::Relaxed)),
        ],
    );
    counter(
        &mut out,
        "shoal_raft_commits_streamed_total",
        "Committed indexes this leader shared with a follower on the replication stream \
         instead of a heartbeat call.",
        m.raft_commits_streamed.load(Ordering::Relaxed),
    );
    counter_family(
        &mut out,
        "shoal_raft_appends_received_total",
        "Append-entries messages this manager took from a leader: \"call\" (heartbeats \
         among them) or \"stream\".",
        "path",
        [
            (
                "call",
                m.raft_appends_received_called.load(Ordering::Relaxed),
            ),
            (
                "stream",
                m.raft_appends_received_streamed.load(Ordering::Relaxed),
            ),
        ],
    );
    m.raft_apply.write(
        &mut out,
        "shoal_raft_apply_seconds",
        "Time to apply one raft entry to the store.",
    );
    counter(
        &mut out,
        "shoal_missed_heartbeats_total",
        "Nodes this leader marked down because their heartbeats stopped.",
        m.missed_heartbeats.load(Ordering::Relaxed),
    );
    m.placement.write(
        &mut out,
        "shoal_task_placement_seconds",
        "Time from a task's creation to its assignment to a node.",
    );
    for (name, help, values) in [
        (
            "shoal_executor_operations_total",
            "Executor calls by operation.",
            &m.executor_ops,
        ),
        (
            "shoal_executor_errors_total",
            "Executor calls that failed, by operation.",
            &m.executor_errors,
        ),
    ] {
        let samples =
            ExecutorOp::ALL.map(|op| (op.name(), values[op as usize].load(Ordering::Relaxed)));
        counter_family(&mut out, name, help, "op", samples);
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {source}; pick a free address with --metrics-addr")]
pub struct BindError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Binds the metrics listener; serving starts with [`serve`]. Split so a
/// taken port fails the start instead of a background task.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

pub async fn serve(listener: TcpListener, agent: Arc<Agent>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            // A scraper that stalls must not hold a task forever.
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &agent)).await;
        });
    }
}

async fn answer(mut stream: tokio::net::TcpStream, agent: &Agent) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..read]);
        if request.len() > 16 * 1024 {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
    }
    let line = request.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => respond(&mut stream, "200 OK", &render(agent).await).await,
        ("GET", _) => {
            respond(
                &mut stream,
                "404 Not Found",
                "shoald serves metrics at /metrics\n",
            )
            .await
        }
        _ => respond(&mut stream, "405 Method Not Allowed", "use GET /metrics\n").await,
    }
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let histogram = Histogram::new();
        histogram.observe(Duration::from_micros(300));
        histogram.observe(Duration::from_millis(7));
        histogram.observe(Duration::from_secs(60));
        let mut out = String::new();
        histogram.write(&mut out, "x", "test");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }
}
