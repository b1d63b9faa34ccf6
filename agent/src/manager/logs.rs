//! Serving `Logs`: aggregated task output from every node.
//!
//! The leader brokers logs (swarmkit's shape): it announces a subscription
//! on the sessions of the nodes that ran the selected tasks, the nodes
//! stream their lines back with `PublishLogs`, and the leader merges them
//! for the reader. Another manager relays the leader's stream.
//!
//! Buffers are bounded everywhere. When a reader is too slow, lines are
//! dropped and counted, and the count reaches the reader as a gap; a slow
//! reader never stalls a node or the manager.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use shoal_proto::v1 as pb;
use tonic::Status;

use super::dispatcher::Dispatcher;
use super::runtime::ManagerRuntime;
use crate::node::Agent;

pub type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogsMessage, Status>> + Send>>;

pub async fn serve_logs(
    _agent: &Arc<Agent>,
    manager: Arc<ManagerRuntime>,
    request: pb::LogsRequest,
) -> Result<LogsStream, Status> {
    if !manager.is_leader() {
        return relay_from_leader(&manager, request).await;
    }
    let dispatcher = manager
        .dispatcher()
        .ok_or_else(|| Status::unavailable("this manager is not leading yet: retry"))?;
    let (selector, task_names, node_names, nodes) = {
        let tables = manager.store.read();
        let mut service_ids = Vec::new();
        let mut task_ids = Vec::new();
        for name in &request.services {
            service_ids.push(tables.find_service(name)?.meta.id.clone());
        }
        for name in &request.tasks {
            task_ids.push(tables.find_task(name)?.meta.id.clone());
        }
        if service_ids.is_empty() && task_ids.is_empty() {
            return Err(Status::invalid_argument(
                "name a service or a task whose logs to show",
            ));
        }
        let tasks: Vec<_> = tables
            .tasks
            .iter()
            .filter(|t| service_ids.contains(&t.service_id) || task_ids.contains(&t.meta.id))
            .cloned()
            .collect();
        let mut task_names = HashMap::new();
        let mut nodes = HashSet::new();
        for task in &tasks {
            task_names.insert(task.meta.id.clone(), task_name(task));
            if !task.node_id.is_empty() {
                nodes.insert(task.node_id.clone());
            }
        }
        let follow = request.options.as_ref().is_some_and(|o| o.follow);
        if follow {
            // Tasks that start later may land on any node.
            nodes.extend(tables.nodes.iter().map(|n| n.meta.id.clone()));
        }
        let node_names: HashMap<String, String> = tables
            .nodes
            .iter()
            .map(|n| (n.meta.id.clone(), n.description.hostname.clone()))
            .collect();
        (
            pb::LogSelector {
                service_ids,
                task_ids,
                node_ids: Vec::new(),
            },
            task_names,
            node_names,
            nodes.into_iter().collect::<Vec<_>>(),
        )
    };
    let options = request.options.unwrap_or(pb::LogsOptions {
        follow: false,
        tail: -1,
        since_ms: 0,
        stdout: true,
        stderr: true,
    });
    let follow = options.follow;
    let (id, mut published, unreachable) = dispatcher.subscribe_logs(selector, options, &nodes);
    let guard = Subscription {
        dispatcher: dispatcher.clone(),
        id,
        nodes: nodes.clone(),
    };
    let known: HashSet<String> = task_names.keys().cloned().collect();
    let store = manager.store.clone();
    let stream = async_stream_of(move |tx| async move {
        let _guard = guard;
        let mut waiting: HashSet<String> = nodes.into_iter().collect();
        for node in &unreachable {
            waiting.remove(node);
        }
        let first = pb::LogsMessage {
            task_names,
            node_names,
            caught_up: waiting.is_empty(),
            ..Default::default()
        };
        if tx.send(Ok(first)).await.is_err() || (waiting.is_empty() && !follow) {
            return;
        }
        let mut named: HashSet<String> = HashSet::new();
        while let Some(batch) = published.recv().await {
            let mut message = pb::LogsMessage {
                lines: batch.message.lines,
                gaps: batch.message.gaps,
                ..Default::default()
            };
            // Tasks that started after the reader asked need names too.
            for line in &message.lines {
                let Some(context) = &line.context else {
                    continue;
                };
                if known.contains(&context.task_id) || !named.insert(context.task_id.clone()) {
                    continue;
                }
                if let Some(task) = store.read().tasks.get(&context.task_id) {
                    message
                        .task_names
                        .insert(task.meta.id.clone(), task_name(task));
                }
            }
            if batch.message.close && waiting.remove(&batch.node_id) && waiting.is_empty() {
                message.caught_up = true;
            }
            let done = message.caught_up && !follow;
            if tx.send(Ok(message)).await.is_err() || done {
                return;
            }
        }
    });
    Ok(stream)
}

/// `service.slot.taskid` (global tasks: `service.node.taskid`), as Docker
/// names task containers.
fn task_name(task: &crate::store::Task) -> String {
    let place = if task.slot > 0 {
        task.slot.to_string()
    } else {
        crate::ids::short(&task.node_id).to_string()
    };
    format!("{}.{}.{}", task.service_name, place, task.meta.id)
}

/// Closes the subscription on the nodes when the reader's stream ends,
/// whichever way it ends.
struct Subscription {
    dispatcher: Arc<Dispatcher>,
    id: String,
    nodes: Vec<String>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.dispatcher.close_logs(&self.id, &self.nodes);
    }
}

/// A stream fed by a producer task through a small channel: when the
/// reader goes away the producer's sends fail and it stops.
fn async_stream_of<F, Fut>(producer: F) -> LogsStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::LogsMessage, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(producer(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

async fn relay_from_leader(
    manager: &Arc<ManagerRuntime>,
    request: pb::LogsRequest,
) -> Result<LogsStream, Status> {
    let (_, leader) = manager.leader().ok_or_else(|| {
        Status::unavailable("the cluster has no leader to gather logs: retry shortly")
    })?;
    let channel = shoal_proto::transport::connect_tls(
        &leader.addr,
        manager.client_tls(),
        shoal_proto::MANAGER_SERVER_NAME,
    )
    .await
    .map_err(|e| Status::unavailable(format!("cannot reach the leader for logs: {e}")))?;
    let mut client = pb::control_client::ControlClient::new(channel);
    let stream = client.logs(request).await?.into_inner();
    Ok(Box::pin(stream.map(|item| item)))
}

/// Takes the log lines a node publishes for the subscriptions announced on
/// its session, and hands them to their readers.
pub async fn receive_published(
    manager: Arc<ManagerRuntime>,
    node_id: String,
    mut stream: tonic::Streaming<pb::PublishLogsMessage>,
) -> Result<(), Status> {
    // Lines dropped for a slow reader, per subscription and task, told to
    // the reader with the next batch that gets through.
    let mut dropped: HashMap<String, HashMap<String, (pb::LogContext, u64)>> = HashMap::new();
    while let Some(mut message) = stream.message().await? {
        let Some(dispatcher) = manager.dispatcher() else {
            return Err(Status::unavailable("this manager stopped leading"));
        };
        if let Some(owed) = dropped.remove(&message.subscription_id) {
            message
                .gaps
                .extend(owed.into_values().map(|(context, count)| pb::LogGap {
                    context: Some(context),
                    dropped: count,
                }));
        }
        let subscription = message.subscription_id.clone();
        let lines = message.lines.clone();
        let gaps = message.gaps.clone();
        if !dispatcher.deliver_logs(&node_id, message) {
            let owed = dropped.entry(subscription).or_default();
            for line in lines {
                let context = line.context.unwrap_or_default();
                owed.entry(context.task_id.clone())
                    .or_insert_with(|| (context, 0))
                    .1 += 1;
            }
            for gap in gaps {
                let context = gap.context.unwrap_or_default();
                owed.entry(context.task_id.clone())
                    .or_insert_with(|| (context, 0))
                    .1 += gap.dropped;
            }
        }
    }
    Ok(())
}
