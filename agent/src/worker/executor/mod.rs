//! Executors run a task's workload on this node. One trait, three runtimes:
//!
//! - [`docker`]: containers on the local Docker engine (bollard).
//! - [`process`]: the task's command as a child process, no isolation.
//! - [`sim`]: no workload, only state transitions, for scale tests.
//!
//! Every operation is idempotent and keyed by task id, so the worker can
//! repeat it after a restart or a lost reply. Workloads are labelled with
//! the node id so that several agents can share one engine.

mod choose;
pub mod docker;
pub mod process;
pub mod sim;

pub use choose::choose;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::store::{Health, Resources, Task};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    /// The task cannot run here as specified (bad image, bad command): the
    /// task is rejected and the orchestrator replaces it.
    #[error("{0}")]
    Rejected(String),
    /// The runtime failed (engine unreachable, I/O): worth retrying.
    #[error("{0}")]
    Runtime(String),
    #[error("no workload for task {0}")]
    NotFound(String),
}

/// How a workload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    /// Runtime's explanation when it is not a plain exit (OOM-killed,
    /// killed by a signal).
    pub message: Option<String>,
}

/// What the runtime reports about the machine.
#[derive(Debug, Clone, Default)]
pub struct EngineInfo {
    pub resources: Resources,
    pub engine_labels: BTreeMap<String, String>,
    pub os: String,
    pub arch: String,
}

/// A workload found in the runtime that belongs to this node, for adopting
/// after an agent restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub task_id: String,
    pub container_id: String,
    pub running: bool,
    /// When it has exited.
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    Stdout,
    Stderr,
}

/// One line a workload printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub timestamp_ns: i64,
    pub source: LogSource,
    /// The line, without its trailing newline.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// Last N lines; None for all.
    pub tail: Option<u64>,
    /// Unix ns lower bound.
    pub since_ns: Option<i64>,
    pub stdout: bool,
    pub stderr: bool,
}

pub trait Executor: Send + Sync + 'static {
    /// `docker`, `process` or `sim`.
    fn kind(&self) -> &'static str;

    fn describe(&self) -> BoxFuture<'_, EngineInfo>;

    /// Makes the workload ready to start (pulls the image if absent,
    /// creates the container) and returns its id. Idempotent.
    fn prepare<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<String, ExecError>>;

    /// Starts a prepared workload. Idempotent: starting a running one is ok.
    fn start<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), ExecError>>;

    /// Resolves when the workload exits (at once if it already has).
    fn wait<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Exit, ExecError>>;

    /// The workload's current health, when it has a health check.
    fn health<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Health, ExecError>>;

    /// Stops the workload: SIGTERM, then SIGKILL after `grace`. Idempotent.
    fn stop<'a>(&'a self, task: &'a Task, grace: Duration) -> BoxFuture<'a, Result<(), ExecError>>;

    /// Removes a stopped workload and what it holds. Idempotent.
    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), ExecError>>;

    /// This node's workloads as the runtime knows them.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Existing>, ExecError>>;

    /// The workload's output: history first (honouring tail and since),
    /// then, with `follow`, new lines until the workload is removed or the
    /// stream is dropped.
    fn logs<'a>(
        &'a self,
        task: &'a Task,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<BoxStream<'static, LogEntry>, ExecError>>;
}
