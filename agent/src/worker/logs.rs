//! Publishing task logs for the subscriptions the leader announces on the
//! session: each subscription gets one `PublishLogs` stream, fed by a
//! reader per matching local task. With `follow`, tasks that start here
//! later join. Readers wait on a bounded queue (the workloads' runtimes
//! keep the logs, so waiting loses nothing and stalls nothing); dropping
//! and counting happens at the manager, for readers that fall behind.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use shoal_proto::v1 as pb;
use shoal_proto::v1::dispatcher_client::DispatcherClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::executor::{LogOptions, LogSource};
use super::tasks::TaskManager;
use crate::store::Task;

/// Lines per published message.
const BATCH: usize = 500;
/// How long lines wait to be batched.
const LINGER: Duration = Duration::from_millis(50);
/// Lines queued per subscription.
const QUEUE: usize = 4_096;
/// How often a following subscription looks for new matching tasks.
const NEW_TASKS: Duration = Duration::from_millis(500);

/// The subscriptions this node is serving.
#[derive(Default)]
pub struct Publishers {
    active: Mutex<HashMap<String, CancellationToken>>,
}

enum Item {
    Line(pb::LogLine),
    /// A task's history is fully read (without follow).
    TaskDone,
}

impl Publishers {
    pub fn apply(
        &self,
        subscriptions: Vec<pb::LogSubscription>,
        tasks: &Arc<TaskManager>,
        client: &DispatcherClient<Channel>,
        session: &CancellationToken,
    ) {
        for subscription in subscriptions {
            if subscription.close {
                if let Some(token) = self.active.lock().remove(&subscription.id) {
                    token.cancel();
                }
                continue;
            }
            let token = session.child_token();
            self.active
                .lock()
                .insert(subscription.id.clone(), token.clone());
            tokio::spawn(publish(subscription, tasks.clone(), client.clone(), token));
        }
    }
}

fn matches(selector: &pb::LogSelector, task: &Task) -> bool {
    selector.service_ids.contains(&task.service_id) || selector.task_ids.contains(&task.meta.id)
}

async fn publish(
    subscription: pb::LogSubscription,
    tasks: Arc<TaskManager>,
    mut client: DispatcherClient<Channel>,
    stop: CancellationToken,
) {
    let selector = subscription.selector.unwrap_or_default();
    let options = subscription.options.unwrap_or_default();
    let log_options = LogOptions {
        follow: options.follow,
        tail: u64::try_from(options.tail).ok(),
        since_ns: (options.since_ms > 0).then(|| options.since_ms.saturating_mul(1_000_000)),
        stdout: options.stdout || !options.stderr,
        stderr: options.stderr || !options.stdout,
    };
    let (lines_tx, mut lines_rx) = mpsc::channel::<Item>(QUEUE);
    let (out_tx, out_rx) = mpsc::channel::<pb::PublishLogsMessage>(8);
    let id = subscription.id.clone();
    let call = tokio::spawn({
        let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
        async move { client.publish_logs(stream).await }
    });

    // Readers: one per matching task, now and (with follow) later.
    let readers = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut started: HashSet<String> = HashSet::new();
            let mut options = log_options.clone();
            loop {
                for task in tasks
                    .assigned()
                    .into_iter()
                    .filter(|t| matches(&selector, t))
                {
                    if started.insert(task.meta.id.clone()) {
                        tokio::spawn(read_task(
                            task,
                            tasks.clone(),
                            options.clone(),
                            lines_tx.clone(),
                            stop.clone(),
                        ));
                    }
                }
                // Tail applies to what existed when the reader asked;
                // tasks that start later are shown from their first line.
                options.tail = None;
                if !log_options.follow {
                    return started.len();
                }
                tokio::select! {
                    () = tokio::time::sleep(NEW_TASKS) => {}
                    () = stop.cancelled() => return started.len(),
                }
            }
        }
    });

    // Batcher: lines out in batches; the end announced once every task's
    // history is read (without follow).
    let mut expected: Option<usize> = None;
    let mut finished = 0usize;
    let mut readers = Some(readers);
    let mut batch = Vec::new();
    loop {
        if let Some(handle) = readers.as_mut().filter(|h| h.is_finished()) {
            expected = handle.await.ok();
            readers = None;
        }
        let all_read = !options.follow && expected.is_some_and(|n| finished >= n);
        let flush = tokio::select! {
            item = lines_rx.recv(), if !all_read => match item {
                Some(Item::Line(line)) => {
                    batch.push(line);
                    batch.len() >= BATCH
                }
                Some(Item::TaskDone) => {
                    finished += 1;
                    true
                }
                None => true,
            },
            () = tokio::time::sleep(LINGER) => true,
            () = stop.cancelled() => break,
        };
        if !flush && !all_read {
            continue;
        }
        let close = all_read && lines_rx.is_empty();
        if !batch.is_empty() || close {
            let message = pb::PublishLogsMessage {
                subscription_id: id.clone(),
                lines: std::mem::take(&mut batch),
                gaps: Vec::new(),
                close,
            };
            if out_tx.send(message).await.is_err() {
                break;
            }
        }
        if close {
            break;
        }
    }
    drop(out_tx);
    stop.cancel();
    let _ = call.await;
}

async fn read_task(
    task: Task,
    tasks: Arc<TaskManager>,
    options: LogOptions,
    lines: mpsc::Sender<Item>,
    stop: CancellationToken,
) {
    let context = pb::LogContext {
        service_id: task.service_id.clone(),
        node_id: task.node_id.clone(),
        task_id: task.meta.id.clone(),
    };
    let stream = loop {
        match tasks.executor().logs(&task, options.clone()).await {
            Ok(stream) => break Some(stream),
            // A follower can see a task the moment it is assigned, before
            // its workload exists: wait for it while the task is still ours.
            Err(_) if options.follow && tasks.holds(&task.meta.id) => {
                tokio::select! {
                    () = tokio::time::sleep(NEW_TASKS) => {}
                    () = stop.cancelled() => return,
                }
            }
            Err(_) => break None,
        }
    };
    if let Some(mut stream) = stream {
        loop {
            let entry = tokio::select! {
                entry = stream.next() => entry,
                () = stop.cancelled() => return,
            };
            let Some(entry) = entry else { break };
            let line = pb::LogLine {
                context: Some(context.clone()),
                timestamp_ns: entry.timestamp_ns,
                stream: match entry.source {
                    LogSource::Stdout => pb::LogStream::Stdout,
                    LogSource::Stderr => pb::LogStream::Stderr,
                } as i32,
                data: entry.data,
            };
            // Waiting here holds back only this reader: the workload's
            // runtime keeps its own log, so nothing upstream stalls.
            tokio::select! {
                sent = lines.send(Item::Line(line)) => if sent.is_err() { return },
                () = stop.cancelled() => return,
            }
        }
    }
    // Counted even when the task has no logs to give (already removed).
    let _ = lines.send(Item::TaskDone).await;
}
