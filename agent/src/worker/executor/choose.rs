//! Picking this node's executor.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::{EngineInfo, ExecError, Executor, Existing, Exit, LogEntry, LogOptions};
use crate::metrics::{ExecutorOp, METRICS};
use crate::node::ExecutorChoice;
use crate::store::{Health, Task};

/// The executor `choice` asks for; `Auto` means Docker when an engine
/// answers, else plain processes.
pub async fn choose(
    choice: ExecutorChoice,
    node_id: &str,
    data_dir: &Path,
    sim_delay: Duration,
) -> Result<Arc<dyn Executor>, ExecError> {
    let inner = choose_runtime(choice, node_id, data_dir, sim_delay).await?;
    Ok(Arc::new(Counted { inner }))
}

async fn choose_runtime(
    choice: ExecutorChoice,
    node_id: &str,
    data_dir: &Path,
    sim_delay: Duration,
) -> Result<Arc<dyn Executor>, ExecError> {
    let process = || -> Arc<dyn Executor> {
        Arc::new(super::process::ProcessExecutor::new(
            node_id,
            data_dir.to_path_buf(),
        ))
    };
    match choice {
        ExecutorChoice::Docker => Ok(Arc::new(
            super::docker::DockerExecutor::connect(node_id).await?,
        )),
        ExecutorChoice::Process => Ok(process()),
        ExecutorChoice::Sim => Ok(Arc::new(super::sim::SimExecutor::new(sim_delay))),
        ExecutorChoice::Auto => match super::docker::DockerExecutor::connect(node_id).await {
            Ok(docker) => Ok(Arc::new(docker)),
            Err(e) => {
                tracing::info!(reason = %e, "no Docker engine answers: running tasks as processes");
                Ok(process())
            }
        },
    }
}

/// Counts every workload operation for the metrics endpoint, whatever the
/// runtime, so no call site has to remember to.
struct Counted {
    inner: Arc<dyn Executor>,
}

impl Executor for Counted {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn describe(&self) -> BoxFuture<'_, EngineInfo> {
        self.inner.describe()
    }

    fn prepare<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<String, ExecError>> {
        Box::pin(
            async move { METRICS.executor(ExecutorOp::Prepare, self.inner.prepare(task).await) },
        )
    }

    fn start<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move { METRICS.executor(ExecutorOp::Start, self.inner.start(task).await) })
    }

    fn wait<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Exit, ExecError>> {
        Box::pin(async move { METRICS.executor(ExecutorOp::Wait, self.inner.wait(task).await) })
    }

    fn health<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Health, ExecError>> {
        self.inner.health(task)
    }

    fn stop<'a>(&'a self, task: &'a Task, grace: Duration) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(
            async move { METRICS.executor(ExecutorOp::Stop, self.inner.stop(task, grace).await) },
        )
    }

    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(
            async move { METRICS.executor(ExecutorOp::Remove, self.inner.remove(task_id).await) },
        )
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Existing>, ExecError>> {
        self.inner.list()
    }

    fn logs<'a>(
        &'a self,
        task: &'a Task,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<BoxStream<'static, LogEntry>, ExecError>> {
        self.inner.logs(task, options)
    }
}
