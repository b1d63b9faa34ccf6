//! Serving `Logs`: aggregated task output from every node.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use shoal_proto::v1 as pb;
use tonic::Status;

use super::runtime::ManagerRuntime;
use crate::node::Agent;

pub type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogsMessage, Status>> + Send>>;

pub async fn serve_logs(
    _agent: &Arc<Agent>,
    _manager: Arc<ManagerRuntime>,
    _request: pb::LogsRequest,
) -> Result<LogsStream, Status> {
    Err(Status::unimplemented(
        "service logs are not available on this manager yet",
    ))
}

/// Takes the log lines a node publishes for the subscriptions announced on
/// its session.
pub async fn receive_published(
    _manager: Arc<ManagerRuntime>,
    _node_id: String,
    mut stream: tonic::Streaming<pb::PublishLogsMessage>,
) -> Result<(), Status> {
    while stream.message().await?.is_some() {}
    Ok(())
}
