//! The `Dispatcher` gRPC service: node sessions, heartbeats, status
//! reports and log publishing, for node certificates of this cluster.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use shoal_proto::v1 as pb;
use shoal_proto::v1::dispatcher_server::Dispatcher as DispatcherApi;
use tonic::{Request, Response, Status, Streaming};

use super::dispatcher::Dispatcher;
use super::runtime::{LEADER_ADDR_HEADER, ManagerRuntime};
use crate::api::authz::{Caller, Trust, require};
use crate::node::Agent;
use crate::pki::identity::PeerRole;
use crate::pki::tls::TlsConnectInfo;
use crate::store::TaskStatus;

pub struct DispatcherService {
    pub agent: Arc<Agent>,
}

impl DispatcherService {
    /// The leader's dispatcher and the calling node's id.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Arc<ManagerRuntime>, Arc<Dispatcher>, String), Status> {
        let manager = self.agent.manager().await?;
        let caller = Caller::of(request);
        {
            let tables = manager.store.read();
            let cluster_id = tables
                .cluster()
                .map(|c| c.cluster_id.clone())
                .unwrap_or_default();
            let removed = |id: &str| {
                tables
                    .cluster()
                    .is_some_and(|c| c.removed_nodes.contains_key(id))
            };
            require(
                &caller,
                &[PeerRole::Worker, PeerRole::Manager],
                &Trust {
                    cluster_id: &cluster_id,
                    is_removed: &removed,
                },
            )?;
        }
        let Caller::Peer(identity) = caller else {
            return Err(Status::permission_denied("sessions are for cluster nodes"));
        };
        let Some(dispatcher) = manager.dispatcher() else {
            let mut status = Status::failed_precondition("this manager is not the leader");
            if let Some((_, member)) = manager.leader()
                && let Ok(value) = member.addr.parse()
            {
                status.metadata_mut().insert(LEADER_ADDR_HEADER, value);
            }
            return Err(status);
        };
        Ok((manager, dispatcher, identity.node_id))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl DispatcherApi for DispatcherService {
    type SessionStream = BoxStream<pb::SessionMessage>;

    async fn session(
        &self,
        request: Request<pb::SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (_, dispatcher, node_id) = self.authorize(&request).await?;
        let remote = request
            .extensions()
            .get::<TlsConnectInfo>()
            .and_then(|i| i.remote_addr)
            .map(|a| a.to_string());
        let (_session, rx) = dispatcher
            .open_session(&node_id, request.into_inner(), remote)
            .await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type HeartbeatStream = BoxStream<pb::HeartbeatResponse>;

    /// Acknowledges each beat with the current period. Authorized once per
    /// stream: a node removed later loses its session, and the next beat
    /// on the stream is refused with `NotFound`, which ends the stream.
    async fn heartbeat(
        &self,
        request: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let (_, dispatcher, node_id) = self.authorize(&request).await?;
        let acks = request.into_inner().map(move |beat| {
            let period = dispatcher.heartbeat(&node_id, &beat?.session_id)?;
            Ok(pb::HeartbeatResponse {
                period_ms: period.as_millis() as u64,
            })
        });
        Ok(Response::new(Box::pin(acks)))
    }

    async fn update_task_status(
        &self,
        request: Request<pb::UpdateTaskStatusRequest>,
    ) -> Result<Response<pb::UpdateTaskStatusResponse>, Status> {
        let (_, dispatcher, node_id) = self.authorize(&request).await?;
        let r = request.into_inner();
        let mut updates = Vec::with_capacity(r.updates.len());
        for update in &r.updates {
            let Some(status) = &update.status else {
                continue;
            };
            let status = TaskStatus::try_from(status)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            updates.push((update.task_id.clone(), status));
        }
        dispatcher
            .update_statuses(&node_id, &r.session_id, updates)
            .await?;
        Ok(Response::new(pb::UpdateTaskStatusResponse {}))
    }

    async fn publish_logs(
        &self,
        request: Request<Streaming<pb::PublishLogsMessage>>,
    ) -> Result<Response<pb::PublishLogsResponse>, Status> {
        let (manager, _, node_id) = self.authorize(&request).await?;
        super::logs::receive_published(manager, node_id, request.into_inner()).await?;
        Ok(Response::new(pb::PublishLogsResponse {}))
    }
}
