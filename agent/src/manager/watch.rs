//! Serving `Watch`: a full copy (or the changes since a version), then
//! live changes, with raft events mixed in. A watcher that falls behind the
//! live stream gets a reset and a fresh copy: it never silently misses a
//! change.

use std::sync::Arc;

use shoal_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use super::control::cluster_event_to_pb;
use super::runtime::ManagerRuntime;
use crate::api::convert::*;
use crate::store::{Action, Changes, Kind, Object, WatchStart};

/// Events per message in a full copy.
const COPY_CHUNK: usize = 1_000;

type Sink = mpsc::Sender<Result<pb::WatchMessage, Status>>;

pub async fn serve_watch(manager: Arc<ManagerRuntime>, kinds: Vec<Kind>, since: u64, tx: Sink) {
    let wanted = |kind: Kind| kinds.is_empty() || kinds.contains(&kind);
    let mut raft_events = manager.subscribe_events();
    let (start, mut changes) = manager.store.watch_from(since);
    let mut version = since;
    match start {
        WatchStart::Full {
            version: v,
            objects,
        } => {
            version = v;
            if send_copy(&manager, &tx, v, objects, &wanted).await.is_err() {
                return;
            }
        }
        WatchStart::Resume(history) => {
            for change in history {
                version = change.version;
                if send_changes(&manager, &tx, &change, &wanted).await.is_err() {
                    return;
                }
            }
            let synced = pb::WatchMessage {
                version,
                synced: true,
                time_ms: crate::ids::now_ms(),
                ..Default::default()
            };
            if tx.send(Ok(synced)).await.is_err() {
                return;
            }
        }
    }
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(change) if change.reset => {
                    if resync(&manager, &tx, &mut changes, &wanted, &mut version).await.is_err() {
                        return;
                    }
                }
                Ok(change) => {
                    if change.version <= version {
                        continue;
                    }
                    version = change.version;
                    if send_changes(&manager, &tx, &change, &wanted).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if resync(&manager, &tx, &mut changes, &wanted, &mut version).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            event = raft_events.recv() => match event {
                Ok(event) => {
                    let message = pb::WatchMessage {
                        version,
                        cluster_events: vec![cluster_event_to_pb(&event)],
                        time_ms: crate::ids::now_ms(),
                        ..Default::default()
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "this manager stopped: reconnect to another manager",
                        )))
                        .await;
                    return;
                }
            },
            () = tx.closed() => return,
        }
    }
}

async fn resync(
    manager: &Arc<ManagerRuntime>,
    tx: &Sink,
    changes: &mut broadcast::Receiver<Arc<Changes>>,
    wanted: &impl Fn(Kind) -> bool,
    version: &mut u64,
) -> Result<(), ()> {
    let (start, receiver) = manager.store.watch_from(0);
    *changes = receiver;
    if let WatchStart::Full {
        version: v,
        objects,
    } = start
    {
        *version = v;
        send_copy(manager, tx, v, objects, wanted).await?;
    }
    Ok(())
}

async fn send_copy(
    manager: &ManagerRuntime,
    tx: &Sink,
    version: u64,
    objects: Vec<Object>,
    wanted: &impl Fn(Kind) -> bool,
) -> Result<(), ()> {
    let objects: Vec<Object> = objects.into_iter().filter(|o| wanted(o.kind())).collect();
    let live = LiveView {
        leader_raft_id: manager.current_leader(),
    };
    let mut chunks: Vec<Vec<pb::WatchEvent>> = Vec::new();
    {
        let tables = manager.store.read();
        for chunk in objects.chunks(COPY_CHUNK) {
            chunks.push(
                chunk
                    .iter()
                    .map(|object| pb::WatchEvent {
                        action: pb::WatchAction::Create as i32,
                        object: Some(object_to_pb(object, &tables, &live)),
                        old: None,
                    })
                    .collect(),
            );
        }
    }
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let last = chunks.len() - 1;
    for (i, events) in chunks.into_iter().enumerate() {
        let message = pb::WatchMessage {
            version,
            reset: i == 0,
            synced: i == last,
            events,
            cluster_events: Vec::new(),
            time_ms: crate::ids::now_ms(),
        };
        tx.send(Ok(message)).await.map_err(|_| ())?;
    }
    Ok(())
}

async fn send_changes(
    manager: &ManagerRuntime,
    tx: &Sink,
    change: &Changes,
    wanted: &impl Fn(Kind) -> bool,
) -> Result<(), ()> {
    let live = LiveView {
        leader_raft_id: manager.current_leader(),
    };
    let events: Vec<pb::WatchEvent> = {
        let tables = manager.store.read();
        change
            .events
            .iter()
            .filter(|e| wanted(e.object.kind()))
            .map(|e| pb::WatchEvent {
                action: action_to_pb(e.action) as i32,
                object: Some(object_to_pb(&e.object, &tables, &live)),
                old: match (e.action, &e.old) {
                    (Action::Update, Some(old)) => Some(old_object_to_pb(old, &tables, &live)),
                    _ => None,
                },
            })
            .collect()
    };
    if events.is_empty() {
        return Ok(());
    }
    for chunk in events.chunks(COPY_CHUNK) {
        let message = pb::WatchMessage {
            version: change.version,
            events: chunk.to_vec(),
            time_ms: change.time,
            ..Default::default()
        };
        tx.send(Ok(message)).await.map_err(|_| ())?;
    }
    Ok(())
}
