//! The `Raft` service: replication between managers, forwarded proposals
//! and membership changes. Only manager certificates of this cluster may
//! call it; once this manager is a raft member, only other members may
//! (so a manager removed from raft, or left over from before a
//! `--force-new-cluster`, cannot disrupt elections).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use shoal_proto::v1 as pb;
use shoal_proto::v1::raft_server::Raft as RaftApi;
use tonic::{Request, Response, Status, Streaming};

use super::runtime::{LEADER_ADDR_HEADER, ManagerRuntime};
use crate::api::authz::{Caller, Trust, require};
use crate::ids::now_ms;
use crate::metrics::METRICS;
use crate::node::Agent;
use crate::pki::identity::PeerRole;
use crate::raft::network::{decode, decode_append, encode};
use crate::raft::types::RaftMember;
use crate::store::*;

#[derive(Clone)]
pub struct RaftService {
    pub agent: Arc<Agent>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn wire(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

impl RaftService {
    /// The manager runtime, if the caller is a manager of this cluster
    /// allowed to talk raft to us. Returns the caller's node id.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        members_only: bool,
    ) -> Result<(Arc<ManagerRuntime>, String), Status> {
        self.authorize_caller(&Caller::of(request), members_only)
            .await
    }

    async fn authorize_caller(
        &self,
        caller: &Caller,
        members_only: bool,
    ) -> Result<(Arc<ManagerRuntime>, String), Status> {
        let active = self.agent.active().await?;
        let manager = active.require_manager()?;
        // A peer that keeps calling a stopped raft would only fill both
        // logs; refused, it counts this manager unreachable.
        if let Some(cause) = manager.raft_stopped() {
            return Err(Status::unavailable(super::raft_stopped_message(&cause)));
        }
        let cluster_id = active.cluster_id();
        let tables = manager.store.read();
        let removed = |id: &str| {
            tables
                .cluster()
                .is_some_and(|c| c.removed_nodes.contains_key(id))
        };
        require(
            caller,
            &[PeerRole::Manager],
            &Trust {
                cluster_id: &cluster_id,
                is_removed: &removed,
            },
        )?;
        drop(tables);
        let Caller::Peer(identity) = caller else {
            return Err(Status::permission_denied("raft is only for managers"));
        };
        if members_only {
            let members = manager.members();
            if !members.is_empty()
                && !members
                    .iter()
                    .any(|(_, m, _)| m.node_id == identity.node_id)
            {
                return Err(Status::permission_denied(format!(
                    "manager {} is not a raft member of this cluster: it was removed, or the \
                     cluster was re-initialized; make it leave and join again",
                    identity.node_id
                )));
            }
        }
        manager.contacts.saw(&identity.node_id);
        Ok((manager, identity.node_id.clone()))
    }

    /// The messages of a stream from a member, each authorized again as a
    /// call would be when it is taken, so that a member removed meanwhile,
    /// or a raft that stopped, ends the stream.
    async fn authorized_messages<T: Send + 'static>(
        &self,
        request: Request<Streaming<T>>,
    ) -> Result<impl Stream<Item = Result<(Arc<ManagerRuntime>, T), Status>> + Send + 'static, Status>
    {
        let caller = Caller::of(&request);
        self.authorize_caller(&caller, true).await?;
        let service = self.clone();
        Ok(request.into_inner().then(move |message| {
            let service = service.clone();
            let caller = caller.clone();
            async move {
                let message = message?;
                let (manager, _) = service.authorize_caller(&caller, true).await?;
                Ok((manager, message))
            }
        }))
    }

    /// A refusal that tells the caller where the leader is.
    fn not_leader(manager: &ManagerRuntime) -> Status {
        let mut status = Status::failed_precondition("this manager is not the leader");
        if let Some((_, member)) = manager.leader()
            && let Ok(value) = member.addr.parse()
        {
            status.metadata_mut().insert(LEADER_ADDR_HEADER, value);
        }
        status
    }
}

/// Hands one append-entries message (a call's, or a stream's) to raft,
/// counted in `received`, and encodes raft's answer.
async fn append(
    manager: &ManagerRuntime,
    data: &[u8],
    received: &AtomicU64,
) -> Result<pb::RaftPayload, Status> {
    let started = std::time::Instant::now();
    let rpc = decode_append(data).map_err(wire)?;
    let decoded = started.elapsed();
    received.fetch_add(1, Ordering::Relaxed);
    let entries = rpc.entries.len();
    let result = manager.raft.append_entries(rpc).await;
    tracing::debug!(
        entries,
        bytes = data.len(),
        decode_ms = decoded.as_secs_f64() * 1000.0,
        total_ms = started.elapsed().as_secs_f64() * 1000.0,
        "append entries handled"
    );
    Ok(pb::RaftPayload {
        data: encode(&result).map_err(wire)?,
    })
}

/// Forwarded batches of one stream proposed at once, at most; the
/// follower's batcher keeps fewer than this in flight.
const PROPOSALS_AT_ONCE: usize = 8;

/// Proposes one forwarded batch (postcard of its transactions) and encodes
/// the outcomes.
async fn propose(
    manager: &ManagerRuntime,
    transactions: &[u8],
) -> Result<pb::ProposeResponse, Status> {
    let txs: Vec<Transaction> = decode(transactions).map_err(wire)?;
    // Forwarded writes are never forwarded again: a follower that thinks
    // we lead gets told otherwise and re-resolves.
    let outcomes = manager.propose_all_local(txs).await;
    Ok(pb::ProposeResponse {
        outcomes: encode(&outcomes).map_err(wire)?,
    })
}

#[tonic::async_trait]
impl RaftApi for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let (manager, _) = self.authorize(&request, true).await?;
        let answer = append(
            &manager,
            &request.get_ref().data,
            &METRICS.raft_appends_received_called,
        )
        .await?;
        Ok(Response::new(answer))
    }

    type AppendStreamStream = BoxStream<pb::RaftPayload>;

    /// Pipelined replication from the leader. Messages are taken one at a
    /// time in the order they came (raft needs them in order; separate
    /// calls could overtake each other).
    async fn append_stream(
        &self,
        request: Request<Streaming<pb::RaftPayload>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let messages = self.authorized_messages(request).await?;
        let answers = messages.then(|message| async move {
            let (manager, message) = message?;
            append(
                &manager,
                &message.data,
                &METRICS.raft_appends_received_streamed,
            )
            .await
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let (manager, _) = self.authorize(&request, true).await?;
        let rpc = decode(&request.get_ref().data).map_err(wire)?;
        let result = manager.raft.vote(rpc).await;
        Ok(Response::new(pb::RaftPayload {
            data: encode(&result).map_err(wire)?,
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let (manager, _) = self.authorize(&request, true).await?;
        let rpc = decode(&request.get_ref().data).map_err(wire)?;
        let result = manager.raft.install_snapshot(rpc).await;
        Ok(Response::new(pb::RaftPayload {
            data: encode(&result).map_err(wire)?,
        }))
    }

    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let (manager, _) = self.authorize(&request, true).await?;
        let answer = propose(&manager, &request.get_ref().transactions).await?;
        Ok(Response::new(answer))
    }

    type ProposeStreamStream = BoxStream<pb::ProposeResponse>;

    /// A follower's forwarded batches. Several are proposed at once (so
    /// that they can share raft entries) and answered in the order they
    /// came.
    async fn propose_stream(
        &self,
        request: Request<Streaming<pb::ProposeRequest>>,
    ) -> Result<Response<Self::ProposeStreamStream>, Status> {
        let messages = self.authorized_messages(request).await?;
        let answers = messages
            .map(|message| async move {
                let (manager, message) = message?;
                propose(&manager, &message.transactions).await
            })
            .buffered(PROPOSALS_AT_ONCE);
        Ok(Response::new(Box::pin(answers)))
    }

    async fn join_raft(
        &self,
        request: Request<pb::JoinRaftRequest>,
    ) -> Result<Response<pb::JoinRaftResponse>, Status> {
        let (manager, node_id) = self.authorize(&request, false).await?;
        if !manager.is_leader() {
            return Err(Self::not_leader(&manager));
        }
        let r = request.into_inner();
        let node = manager
            .store
            .read()
            .nodes
            .get(&node_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("node {node_id} is not in the cluster")))?;
        let expected = node.manager_status.as_ref().map(|m| m.raft_id);
        if node.spec.desired_role != Role::Manager || expected != Some(r.raft_id) {
            return Err(Status::permission_denied(format!(
                "node {} is not meant to be a manager with raft id {}",
                node.description.hostname, r.raft_id
            )));
        }
        crate::node::join::check_addr("the manager address", &r.addr)?;
        manager
            .add_member(
                r.raft_id,
                RaftMember {
                    addr: r.addr.clone(),
                    node_id: node_id.clone(),
                },
            )
            .await
            .map_err(Status::unavailable)?;
        // Raft has the new voter: record the role in the store.
        for _ in 0..5 {
            let Some(current) = manager.store.read().nodes.get(&node_id).cloned() else {
                break;
            };
            let mut node = (*current).clone();
            node.role = Role::Manager;
            let status = node.manager_status.get_or_insert_with(Default::default);
            status.raft_id = r.raft_id;
            status.addr = r.addr.clone();
            status.reachability = Reachability::Reachable;
            node.meta.updated_at = now_ms();
            match manager
                .propose(Transaction::new(now_ms()).update(node))
                .await
            {
                Err(super::ProposeError::Rejected(TxError::Conflict { .. })) => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => break,
            }
        }
        tracing::info!(node = %node.description.hostname, raft_id = r.raft_id, "manager joined raft");
        let addrs = manager
            .members()
            .into_iter()
            .map(|(_, m, _)| m.addr)
            .collect();
        Ok(Response::new(pb::JoinRaftResponse {
            manager_addrs: addrs,
        }))
    }

    async fn leave_raft(
        &self,
        request: Request<pb::LeaveRaftRequest>,
    ) -> Result<Response<pb::LeaveRaftResponse>, Status> {
        let (manager, node_id) = self.authorize(&request, true).await?;
        if !manager.is_leader() {
            return Err(Self::not_leader(&manager));
        }
        let raft_id = request.get_ref().raft_id;
        let member = manager
            .members()
            .into_iter()
            .find(|(id, _, _)| *id == raft_id);
        if let Some((_, member, _)) = member
            && member.node_id != node_id
        {
            return Err(Status::permission_denied(
                "a manager can only remove itself from raft",
            ));
        }
        manager
            .remove_member(raft_id)
            .await
            .map_err(Status::unavailable)?;
        Ok(Response::new(pb::LeaveRaftResponse {}))
    }
}
