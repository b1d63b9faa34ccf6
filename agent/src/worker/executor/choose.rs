//! Picking this node's executor.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{ExecError, Executor};
use crate::node::ExecutorChoice;

/// The executor `choice` asks for; `Auto` means Docker when an engine
/// answers, else plain processes.
pub async fn choose(
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
