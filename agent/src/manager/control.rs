//! The `Control` service: the operator API, on the local socket and (on
//! managers) over TLS. Node-local calls are answered by the node; cluster
//! calls need this node to be a manager, read its local store, and write
//! by proposing transactions (forwarded to the leader when needed).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use shoal_proto::v1 as pb;
use shoal_proto::v1::control_server::Control;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::ProposeError;
use super::runtime::{ClusterEvent, ManagerRuntime};
use super::{orchestrator, validate};
use crate::api::authz::{Caller, Trust, require};
use crate::api::convert::*;
use crate::ids::now_ms;
use crate::node::join::{InitRequest, JoinRequest, normalize_cluster_spec};
use crate::node::{Agent, NodeError};
use crate::pki::identity::{Identity, PeerRole};
use crate::pki::token::{JoinToken, UnlockKey};
use crate::store::*;

pub struct ControlService {
    pub agent: Arc<Agent>,
}

/// Roles allowed on the operator API over TLS: operators, and managers
/// (which act for their own local operators).
const OPERATOR_ROLES: &[PeerRole] = &[PeerRole::Operator, PeerRole::Manager];

/// How many conflicting concurrent writes an update retries through.
const CONFLICT_RETRIES: usize = 5;

fn local_only(caller: &Caller) -> Result<(), Status> {
    match caller {
        Caller::Local => Ok(()),
        _ => Err(Status::permission_denied(
            "this command acts on one node and is only taken on that node's local socket: \
             run it on the node, with --socket (SHOAL_SOCKET) instead of --host",
        )),
    }
}

impl ControlService {
    /// The manager runtime, after checking the caller may use the cluster
    /// API.
    async fn manager_for<T>(&self, request: &Request<T>) -> Result<Arc<ManagerRuntime>, Status> {
        let caller = Caller::of(request);
        let manager = self.agent.manager().await?;
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
            OPERATOR_ROLES,
            &Trust {
                cluster_id: &cluster_id,
                is_removed: &removed,
            },
        )?;
        drop(tables);
        Ok(manager)
    }
}

fn live_view(manager: &ManagerRuntime) -> LiveView {
    LiveView {
        leader_raft_id: manager.current_leader(),
    }
}

/// How fresh a read answered from `tables` (held by the caller) is.
fn read_info(manager: &ManagerRuntime, tables: &Tables) -> pb::ReadInfo {
    let stale_reason = if let Some(cause) = manager.raft_stopped() {
        format!(
            "{}: the answer may be stale",
            super::raft_stopped_message(&cause)
        )
    } else if !manager.has_working_leader() {
        let (reachable, total) = manager.reachable_voters_in(tables);
        format!(
            "this manager sees no leader ({reachable} of {total} managers reachable): the answer may be stale"
        )
    } else {
        String::new()
    };
    pb::ReadInfo {
        stale_reason,
        version: manager.store.version(),
    }
}

fn cluster_of(tables: &Tables) -> Result<Arc<Cluster>, Status> {
    tables
        .cluster()
        .cloned()
        .ok_or_else(|| Status::unavailable("the cluster object is not replicated here yet: retry"))
}

fn manager_addrs(tables: &Tables) -> Vec<String> {
    let mut addrs: Vec<String> = tables
        .nodes
        .iter()
        .filter(|n| n.role == Role::Manager)
        .filter_map(|n| n.manager_status.as_ref().map(|m| m.addr.clone()))
        .filter(|a| !a.is_empty())
        .collect();
    addrs.sort();
    addrs
}

/// Retries `attempt` while it fails with a version conflict: the read in
/// it sees the newer version next time.
async fn with_conflict_retry<T, F, Fut>(mut attempt: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut last = None;
    for _ in 0..CONFLICT_RETRIES {
        match attempt().await {
            Err(status) if status.code() == tonic::Code::Aborted => last = Some(status),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| Status::aborted("too many concurrent changes: retry")))
}

/// Refuses a write based on `version` when the service has changed since
/// (0 names no version: the caller accepts whatever is current).
fn check_service_version(current: &Service, version: u64) -> Result<(), Status> {
    if version != 0 && version != current.meta.version {
        return Err(Status::aborted(format!(
            "service {} was changed by someone else (version {} is now {}): read it again and \
             retry",
            current.spec.name, version, current.meta.version
        )));
    }
    Ok(())
}

/// `service` with its update or rollback paused as the update supervisor
/// pauses one on failure: it then replaces no more tasks until the
/// service is updated again.
fn paused_update(service: &Service, now: i64) -> Result<Service, Status> {
    let name = &service.spec.name;
    let status = service.update_status.as_ref();
    let paused = match status.map(|s| s.state) {
        Some(UpdateState::Updating) => UpdateState::Paused,
        Some(UpdateState::RollbackStarted) => UpdateState::RollbackPaused,
        Some(UpdateState::Paused | UpdateState::RollbackPaused) => {
            return Err(Status::failed_precondition(format!(
                "service {name}: its update is already paused; resume it by updating the service"
            )));
        }
        _ => {
            return Err(Status::failed_precondition(format!(
                "service {name} has no update in progress to pause"
            )));
        }
    };
    let mut updated = service.clone();
    updated.update_status = Some(UpdateStatus {
        state: paused,
        // A pause does not restart the update: it still began when it
        // began, as when the supervisor pauses one on failure.
        started_at: status.map_or(now, |s| s.started_at),
        completed_at: 0,
        message: "paused by the operator".into(),
    });
    updated.meta.updated_at = now;
    Ok(updated)
}

/// The service as written at `version`, with its replica counts, for an
/// update's answer.
fn written_service(manager: &ManagerRuntime, service: Service, version: u64) -> pb::Service {
    let tables = manager.store.read();
    let mut service = tables
        .services
        .get(&service.meta.id)
        .map(|s| (**s).clone())
        .unwrap_or(service);
    if service.meta.version < version {
        service.meta.version = version;
    }
    let (running, desired) = replica_counts(&tables, &service);
    service_to_pb(&service, running, desired)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Ends `stream` with UNAVAILABLE once the agent stops: a client following
/// events or logs hears why its stream ended, and the stop does not wait
/// for it to hang up.
fn until_stopped<T: Send + 'static>(
    stream: BoxStream<T>,
    stopping: CancellationToken,
) -> BoxStream<T> {
    Box::pin(futures::stream::unfold(
        Some((stream, stopping)),
        |state| async move {
            let (mut stream, stopping) = state?;
            tokio::select! {
                item = stream.next() => item.map(|item| (item, Some((stream, stopping)))),
                () = stopping.cancelled() => Some((
                    Err(Status::unavailable(
                        "shoald on this node is stopping: reconnect once it is back",
                    )),
                    None,
                )),
            }
        },
    ))
}

#[tonic::async_trait]
impl Control for ControlService {
    // ------------------------------------------------------------ this node

    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let caller = Caller::of(&request);
        if caller != Caller::Local {
            // Over TLS, only cluster members may look.
            self.manager_for(&request).await?;
        }
        Ok(Response::new(super::info::info(&self.agent).await))
    }

    async fn swarm_init(
        &self,
        request: Request<pb::SwarmInitRequest>,
    ) -> Result<Response<pb::SwarmInitResponse>, Status> {
        local_only(&Caller::of(&request))?;
        let r = request.into_inner();
        let outcome = self
            .agent
            .init(InitRequest {
                advertise_addr: r.advertise_addr,
                listen_addr: r.listen_addr,
                force_new_cluster: r.force_new_cluster,
                autolock: r.autolock,
                spec: r.spec.as_ref().map(ClusterSpec::from),
            })
            .await?;
        Ok(Response::new(pb::SwarmInitResponse {
            node_id: outcome.node_id,
            cluster_id: outcome.cluster_id,
            tokens: Some(pb::JoinTokens {
                worker: outcome.tokens.worker.clone(),
                manager: outcome.tokens.manager.clone(),
            }),
            unlock_key: outcome
                .unlock_key
                .map(|k| k.expose().expose().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn swarm_join(
        &self,
        request: Request<pb::SwarmJoinRequest>,
    ) -> Result<Response<pb::SwarmJoinResponse>, Status> {
        local_only(&Caller::of(&request))?;
        let r = request.into_inner();
        let (node_id, role, cluster_id) = self
            .agent
            .join(JoinRequest {
                token: r.token,
                remote_addr: r.remote_addr,
                advertise_addr: r.advertise_addr,
                listen_addr: r.listen_addr,
            })
            .await?;
        Ok(Response::new(pb::SwarmJoinResponse {
            node_id,
            role: pb::NodeRole::from(role) as i32,
            cluster_id,
        }))
    }

    async fn swarm_leave(
        &self,
        request: Request<pb::SwarmLeaveRequest>,
    ) -> Result<Response<pb::SwarmLeaveResponse>, Status> {
        local_only(&Caller::of(&request))?;
        self.agent.leave(request.into_inner().force).await?;
        Ok(Response::new(pb::SwarmLeaveResponse {}))
    }

    async fn swarm_unlock(
        &self,
        request: Request<pb::SwarmUnlockRequest>,
    ) -> Result<Response<pb::SwarmUnlockResponse>, Status> {
        local_only(&Caller::of(&request))?;
        let key = UnlockKey::parse(request.get_ref().unlock_key.trim())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.agent.unlock(&key).await?;
        Ok(Response::new(pb::SwarmUnlockResponse {}))
    }

    // ------------------------------------------------------ cluster settings

    async fn get_cluster(
        &self,
        request: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::GetClusterResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let tables = manager.store.read();
        let cluster = cluster_of(&tables)?;
        Ok(Response::new(pb::GetClusterResponse {
            cluster: Some(cluster.as_ref().into()),
            read: Some(read_info(&manager, &tables)),
        }))
    }

    async fn swarm_update(
        &self,
        request: Request<pb::SwarmUpdateRequest>,
    ) -> Result<Response<pb::SwarmUpdateResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let r = request.into_inner();
        let wanted =
            r.spec.as_ref().map(ClusterSpec::from).ok_or_else(|| {
                Status::invalid_argument("the request carries no cluster settings")
            })?;
        let wanted = normalize_cluster_spec(wanted);
        validate::cluster_spec(&wanted).map_err(Status::invalid_argument)?;
        let (cluster, new_key) = with_conflict_retry(|| async {
            let mut cluster = (*cluster_of(&manager.store.read())?).clone();
            if r.version != 0 && r.version != cluster.meta.version {
                return Err(Status::failed_precondition(format!(
                    "the cluster settings changed since version {} (now {}): read them again",
                    r.version, cluster.meta.version
                )));
            }
            let mut new_key = None;
            if wanted.autolock && cluster.unlock_key.is_none() {
                let key = UnlockKey::generate();
                cluster.unlock_key = Some(key.expose());
                new_key = Some(key);
            } else if !wanted.autolock {
                cluster.unlock_key = None;
            }
            cluster.spec = wanted.clone();
            cluster.meta.updated_at = now_ms();
            manager
                .propose(Transaction::new(now_ms()).update(cluster.clone()))
                .await?;
            Ok((cluster, new_key))
        })
        .await?;
        Ok(Response::new(pb::SwarmUpdateResponse {
            cluster: Some((&cluster).into()),
            unlock_key: new_key
                .map(|k| k.expose().expose().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn get_join_tokens(
        &self,
        request: Request<pb::GetJoinTokensRequest>,
    ) -> Result<Response<pb::GetJoinTokensResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let tables = manager.store.read();
        let cluster = cluster_of(&tables)?;
        Ok(Response::new(pb::GetJoinTokensResponse {
            tokens: Some(pb::JoinTokens {
                worker: cluster.join_tokens.worker.clone(),
                manager: cluster.join_tokens.manager.clone(),
            }),
            manager_addrs: manager_addrs(&tables),
        }))
    }

    async fn rotate_join_token(
        &self,
        request: Request<pb::RotateJoinTokenRequest>,
    ) -> Result<Response<pb::GetJoinTokensResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let r = request.into_inner();
        if !r.worker && !r.manager {
            return Err(Status::invalid_argument(
                "say which token to rotate: worker or manager",
            ));
        }
        let cluster = with_conflict_retry(|| async {
            let mut cluster = (*cluster_of(&manager.store.read())?).clone();
            let digest = cluster.root_ca.digest.clone();
            if r.worker {
                cluster.join_tokens.worker = JoinToken::generate(&digest).expose();
            }
            if r.manager {
                cluster.join_tokens.manager = JoinToken::generate(&digest).expose();
            }
            cluster.meta.updated_at = now_ms();
            manager
                .propose(Transaction::new(now_ms()).update(cluster.clone()))
                .await?;
            Ok(cluster)
        })
        .await?;
        tracing::info!(
            worker = r.worker,
            manager = r.manager,
            "join tokens rotated"
        );
        Ok(Response::new(pb::GetJoinTokensResponse {
            tokens: Some(pb::JoinTokens {
                worker: cluster.join_tokens.worker.clone(),
                manager: cluster.join_tokens.manager.clone(),
            }),
            manager_addrs: manager_addrs(&manager.store.read()),
        }))
    }

    async fn get_unlock_key(
        &self,
        request: Request<pb::GetUnlockKeyRequest>,
    ) -> Result<Response<pb::UnlockKeyResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let tables = manager.store.read();
        let cluster = cluster_of(&tables)?;
        Ok(Response::new(pb::UnlockKeyResponse {
            unlock_key: cluster
                .unlock_key
                .as_ref()
                .map(|k| k.expose().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn rotate_unlock_key(
        &self,
        request: Request<pb::RotateUnlockKeyRequest>,
    ) -> Result<Response<pb::UnlockKeyResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let cluster = with_conflict_retry(|| async {
            let mut cluster = (*cluster_of(&manager.store.read())?).clone();
            if cluster.unlock_key.is_none() {
                return Err(Status::failed_precondition(
                    "autolock is off, so there is no unlock key to rotate: turn it on with \
                     'shoal swarm update --autolock=true'",
                ));
            }
            cluster.unlock_key = Some(UnlockKey::generate().expose());
            cluster.meta.updated_at = now_ms();
            manager
                .propose(Transaction::new(now_ms()).update(cluster.clone()))
                .await?;
            Ok(cluster)
        })
        .await?;
        tracing::info!("unlock key rotated");
        Ok(Response::new(pb::UnlockKeyResponse {
            unlock_key: cluster
                .unlock_key
                .as_ref()
                .map(|k| k.expose().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn issue_operator_certificate(
        &self,
        request: Request<pb::IssueOperatorCertificateRequest>,
    ) -> Result<Response<pb::IssueOperatorCertificateResponse>, Status> {
        local_only(&Caller::of(&request))?;
        let manager = self.agent.manager().await?;
        let tables = manager.store.read();
        let cluster = cluster_of(&tables)?;
        let ca = crate::pki::ca::CertificateAuthority::from_pem(
            &cluster.root_ca.cert_pem,
            &crate::secret::Secret::new(cluster.root_ca.key_pem.clone()),
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        let name = request.get_ref().name.trim();
        let id = if name.is_empty() {
            format!("operator-{}", crate::ids::short(&crate::ids::new_id()))
        } else {
            validate::operator_name(name).map_err(Status::invalid_argument)?;
            name.to_string()
        };
        let identity = Identity {
            node_id: id,
            role: PeerRole::Operator,
            cluster_id: cluster.cluster_id.clone(),
        };
        let (cert, key) = ca
            .issue_operator(
                &identity,
                Duration::from_secs(cluster.spec.node_cert_expiry_s),
            )
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(operator = %identity.node_id, "issued an operator certificate");
        Ok(Response::new(pb::IssueOperatorCertificateResponse {
            certificate_pem: cert,
            key_pem: key.expose().to_string(),
            root_ca_pem: cluster.root_ca.cert_pem.clone(),
            manager_addrs: manager_addrs(&tables),
        }))
    }

    async fn rotate_root_ca(
        &self,
        request: Request<pb::RotateRootCaRequest>,
    ) -> Result<Response<pb::RotateRootCaResponse>, Status> {
        self.manager_for(&request).await?;
        Err(Status::unimplemented(
            "root CA rotation is not supported yet: the planned design is under 'Root CA rotation' \
             in ARCHITECTURE.md",
        ))
    }

    // ---------------------------------------------------------------- nodes

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let live = live_view(&manager);
        let tables = manager.store.read();
        let nodes: Vec<Arc<Node>> = if request.get_ref().names.is_empty() {
            tables.nodes.iter().cloned().collect()
        } else {
            request
                .get_ref()
                .names
                .iter()
                .map(|name| tables.find_node(name))
                .collect::<Result<_, _>>()?
        };
        let mut nodes: Vec<pb::Node> = nodes.iter().map(|n| node_to_pb(n, &live)).collect();
        nodes.sort_by(|a, b| {
            let host = |n: &pb::Node| n.description.as_ref().map(|d| d.hostname.clone());
            host(a).cmp(&host(b))
        });
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            read: Some(read_info(&manager, &tables)),
        }))
    }

    async fn update_node(
        &self,
        request: Request<pb::UpdateNodeRequest>,
    ) -> Result<Response<pb::UpdateNodeResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let r = request.into_inner();
        let spec = r
            .spec
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("the request carries no node spec"))?;
        let spec = NodeSpec::try_from(spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
        validate::labels("node label", &spec.labels).map_err(Status::invalid_argument)?;
        let node = {
            let tables = manager.store.read();
            let node = tables.find_node(&r.node)?;
            if r.version != 0 && r.version != node.meta.version {
                return Err(Status::aborted(format!(
                    "node {} was changed by someone else (version {} is now {}): read it again \
                     and retry",
                    node.description.hostname, r.version, node.meta.version
                )));
            }
            if spec.desired_role == Role::Worker && node.spec.desired_role == Role::Manager {
                check_demotion(&manager, &tables, &node)?;
            }
            if spec.desired_role == Role::Manager
                && node.role == Role::Worker
                && node.status.addr.is_empty()
            {
                return Err(Status::failed_precondition(format!(
                    "node {} cannot become a manager: it joined without --advertise-addr, so \
                     other managers cannot reach it; make it leave and join again with one",
                    node.description.hostname
                )));
            }
            let mut node = (*node).clone();
            node.spec = spec;
            node.meta.updated_at = now_ms();
            node
        };
        let version = manager
            .propose(Transaction::new(now_ms()).update(node.clone()))
            .await?;
        let live = live_view(&manager);
        let tables = manager.store.read();
        let node = tables
            .nodes
            .get(&node.meta.id)
            .map(|n| node_to_pb(n, &live))
            .unwrap_or_else(|| {
                let mut n = node_to_pb(&node, &live);
                if let Some(meta) = n.meta.as_mut() {
                    meta.version = version;
                }
                n
            });
        Ok(Response::new(pb::UpdateNodeResponse { node: Some(node) }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let r = request.into_inner();
        with_conflict_retry(|| async {
            let tx = {
                let tables = manager.store.read();
                let node = tables.find_node(&r.node)?;
                let name = node.description.hostname.clone();
                if node.role == Role::Manager || node.spec.desired_role == Role::Manager {
                    return Err(Status::failed_precondition(format!(
                        "node {name} is a manager: demote it with 'shoal node demote {name}' before \
                         removing it"
                    )));
                }
                if node.status.state != NodeState::Down && !r.force {
                    return Err(Status::failed_precondition(format!(
                        "node {name} is not down and can't be removed: stop its agent (or make it \
                         'shoal swarm leave') first, or use --force"
                    )));
                }
                let mut cluster = (*cluster_of(&tables)?).clone();
                cluster.removed_nodes.insert(node.meta.id.clone(), now_ms());
                let mut tx = Transaction::new(now_ms()).update(cluster).delete(&*node);
                for task in tables.tasks_on_node(&node.meta.id) {
                    tx.push(orchestrator::remove(task));
                }
                tx
            };
            manager.propose(tx).await?;
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    // -------------------------------------------------- services and tasks

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let tables = manager.store.read();
        let services: Vec<Arc<Service>> = if request.get_ref().names.is_empty() {
            tables.services.iter().cloned().collect()
        } else {
            request
                .get_ref()
                .names
                .iter()
                .map(|name| tables.find_service(name))
                .collect::<Result<_, _>>()?
        };
        let mut services: Vec<pb::Service> = services
            .iter()
            .map(|s| {
                let (running, desired) = replica_counts(&tables, s);
                service_to_pb(s, running, desired)
            })
            .collect();
        services.sort_by(|a, b| {
            let name = |s: &pb::Service| s.spec.as_ref().map(|s| s.name.clone());
            name(a).cmp(&name(b))
        });
        Ok(Response::new(pb::ListServicesResponse {
            services,
            read: Some(read_info(&manager, &tables)),
        }))
    }

    async fn create_service(
        &self,
        request: Request<pb::CreateServiceRequest>,
    ) -> Result<Response<pb::CreateServiceResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let spec = request
            .get_ref()
            .spec
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("the request carries no service spec"))?;
        let mut spec =
            ServiceSpec::try_from(spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if spec.name.is_empty() {
            spec.name = validate::random_service_name();
        }
        validate::service_spec(&spec).map_err(Status::invalid_argument)?;
        let now = now_ms();
        let service = Service {
            meta: Meta::new(crate::ids::new_id(), now),
            spec,
            previous_spec: None,
            update_status: None,
        };
        let version = manager
            .propose(Transaction::new(now).create(service.clone()))
            .await?;
        tracing::debug!(service = %service.spec.name, "service created");
        let mut service = service;
        service.meta.version = version;
        let desired = service.spec.replicas;
        Ok(Response::new(pb::CreateServiceResponse {
            service: Some(service_to_pb(&service, 0, desired)),
        }))
    }

    async fn update_service(
        &self,
        request: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<pb::UpdateServiceResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let r = request.into_inner();
        if r.pause {
            if r.spec.is_some() || r.rollback {
                return Err(Status::invalid_argument(
                    "pause takes no spec and no rollback: it only pauses the update in progress",
                ));
            }
            // The update supervisor writes the service too (update status),
            // so a pause that lost that race is tried again on a fresh read.
            let (service, version) = with_conflict_retry(|| async {
                let service = {
                    let tables = manager.store.read();
                    let current = tables.find_service(&r.service)?;
                    check_service_version(&current, r.version)?;
                    paused_update(&current, now_ms())?
                };
                let version = manager
                    .propose(Transaction::new(now_ms()).update(service.clone()))
                    .await?;
                Ok((service, version))
            })
            .await?;
            tracing::info!(service = %service.spec.name, "update paused by the operator");
            return Ok(Response::new(pb::UpdateServiceResponse {
                service: Some(written_service(&manager, service, version)),
            }));
        }
        let wanted = match &r.spec {
            Some(spec) if !r.rollback => Some(
                ServiceSpec::try_from(spec).map_err(|e| Status::invalid_argument(e.to_string()))?,
            ),
            None if !r.rollback => {
                return Err(Status::invalid_argument(
                    "the request carries no service spec",
                ));
            }
            _ => None,
        };
        // The update supervisor writes the service too (update status, and
        // a version check with each batch): a write that lost that race is
        // tried again on a fresh read, and one naming an old version is
        // still refused.
        let (service, version) = with_conflict_retry(|| async {
            let service = {
                let tables = manager.store.read();
                let current = tables.find_service(&r.service)?;
                check_service_version(&current, r.version)?;
                let mut service = (*current).clone();
                let now = now_ms();
                match wanted.clone() {
                    None => {
                        let Some(previous) = service.previous_spec.take() else {
                            return Err(Status::failed_precondition(format!(
                                "service {} has no previous spec to roll back to",
                                service.spec.name
                            )));
                        };
                        service.previous_spec = Some(std::mem::replace(&mut service.spec, previous));
                        service.update_status = Some(UpdateStatus {
                            state: UpdateState::RollbackStarted,
                            started_at: now,
                            completed_at: 0,
                            message: "manually requested rollback".into(),
                        });
                    }
                    Some(mut spec) => {
                        if spec.mode != service.spec.mode {
                            return Err(Status::invalid_argument(format!(
                                "service {} is {:?}: its mode cannot change; remove it and create it \
                                 again",
                                service.spec.name, service.spec.mode
                            )));
                        }
                        if spec.name.is_empty() {
                            spec.name = service.spec.name.clone();
                        }
                        if spec.name != service.spec.name {
                            return Err(Status::invalid_argument(format!(
                                "service {} cannot be renamed",
                                service.spec.name
                            )));
                        }
                        validate::service_spec(&spec).map_err(Status::invalid_argument)?;
                        let paused =
                            service.update_status.as_ref().map(|u| u.state).filter(|s| {
                                matches!(s, UpdateState::Paused | UpdateState::RollbackPaused)
                            });
                        if spec.task != service.spec.task {
                            service.previous_spec = Some(service.spec.clone());
                            // The update supervisor sets the new status when it
                            // starts replacing tasks.
                            service.update_status = None;
                        } else if let Some(paused) = paused {
                            // Updating a paused service resumes it where it
                            // stopped: a rollback stays a rollback (with its own
                            // config), and an update whose last batch was
                            // already out still gets its verdict. Failures count
                            // from now, or the ones that paused it would pause
                            // it again at once.
                            let (state, message) = if paused == UpdateState::RollbackPaused {
                                (UpdateState::RollbackStarted, "rollback resumed")
                            } else {
                                (UpdateState::Updating, "update resumed")
                            };
                            service.update_status = Some(UpdateStatus {
                                state,
                                started_at: now,
                                completed_at: 0,
                                message: message.into(),
                            });
                        }
                        service.spec = spec;
                    }
                }
                service.meta.updated_at = now;
                service
            };
            let version = manager
                .propose(Transaction::new(now_ms()).update(service.clone()))
                .await?;
            Ok((service, version))
        })
        .await?;
        Ok(Response::new(pb::UpdateServiceResponse {
            service: Some(written_service(&manager, service, version)),
        }))
    }

    async fn remove_service(
        &self,
        request: Request<pb::RemoveServiceRequest>,
    ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let reference = request.into_inner().service;
        with_conflict_retry(|| async {
            let tx = {
                let tables = manager.store.read();
                let service = tables.find_service(&reference)?;
                let mut tx = Transaction::new(now_ms()).delete(&*service);
                for task in tables.tasks_of_service(&service.meta.id) {
                    tx.push(orchestrator::remove(task));
                }
                tx
            };
            manager.propose(tx).await?;
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::RemoveServiceResponse {}))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let manager = self.manager_for(&request).await?;
        let r = request.get_ref();
        let tables = manager.store.read();
        let desired: Vec<TaskState> = r
            .desired_states
            .iter()
            .filter_map(|s| pb::TaskState::try_from(*s).ok().map(TaskState::from))
            .collect();
        let mut candidates: Vec<Arc<Task>> = Vec::new();
        if !r.services.is_empty() {
            for name in &r.services {
                let service = tables.find_service(name)?;
                candidates.extend(tables.tasks_of_service(&service.meta.id).cloned());
            }
        } else if !r.nodes.is_empty() {
            for name in &r.nodes {
                let node = tables.find_node(name)?;
                candidates.extend(tables.tasks_on_node(&node.meta.id).cloned());
            }
        } else if !r.tasks.is_empty() {
            for name in &r.tasks {
                candidates.push(tables.find_task(name)?);
            }
        } else {
            candidates.extend(tables.tasks.iter().cloned());
            // The table keeps no order; answers do.
            candidates.sort_unstable_by(|a, b| a.meta.id.cmp(&b.meta.id));
        }
        let node_filter: Vec<String> = r
            .nodes
            .iter()
            .filter_map(|n| tables.find_node(n).ok().map(|n| n.meta.id.clone()))
            .collect();
        let tasks = candidates
            .iter()
            .filter(|t| desired.is_empty() || desired.contains(&t.desired_state))
            .filter(|t| node_filter.is_empty() || node_filter.contains(&t.node_id))
            .map(|t| task_to_pb(t, &hostname_of(&tables, &t.node_id)))
            .collect();
        Ok(Response::new(pb::ListTasksResponse {
            tasks,
            read: Some(read_info(&manager, &tables)),
        }))
    }

    // ---------------------------------------------------------------- streams

    type WatchStream = BoxStream<pb::WatchMessage>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let manager = self.manager_for(&request).await?;
        let r = request.into_inner();
        let kinds: Vec<Kind> = r
            .kinds
            .iter()
            .filter_map(|k| pb::ObjectKind::try_from(*k).ok().and_then(kind_from_pb))
            .collect();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(super::watch::serve_watch(
            manager,
            kinds,
            r.since_version,
            tx,
        ));
        Ok(Response::new(until_stopped(
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)),
            self.agent.shutdown.clone(),
        )))
    }

    type LogsStream = BoxStream<pb::LogsMessage>;

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let manager = self.manager_for(&request).await?;
        let stream = super::logs::serve_logs(&self.agent, manager, request.into_inner()).await?;
        Ok(Response::new(until_stopped(
            stream,
            self.agent.shutdown.clone(),
        )))
    }
}

/// Refuses to demote the last manager, or one whose demotion breaks quorum.
fn check_demotion(manager: &ManagerRuntime, tables: &Tables, node: &Node) -> Result<(), Status> {
    let name = &node.description.hostname;
    let managers = tables
        .nodes
        .iter()
        .filter(|n| n.spec.desired_role == Role::Manager)
        .count();
    if managers <= 1 {
        return Err(Status::failed_precondition(format!(
            "node {name} is the last manager of the swarm and cannot be demoted: promote another \
             node first"
        )));
    }
    let (reachable, total) = manager.reachable_voters_in(tables);
    let node_reachable = node
        .manager_status
        .as_ref()
        .is_some_and(|m| m.reachability == Reachability::Reachable);
    let remaining = total.saturating_sub(1);
    let quorum = shoal_proto::quorum(remaining);
    let reachable_after = if node_reachable {
        reachable.saturating_sub(1)
    } else {
        reachable
    };
    if remaining > 0 && reachable_after < quorum {
        return Err(Status::failed_precondition(format!(
            "demoting {name} would leave {reachable_after} of {remaining} managers reachable, \
             below the quorum of {quorum}: bring the other managers back first"
        )));
    }
    Ok(())
}

/// Renders raft events for watchers.
pub fn cluster_event_to_pb(event: &ClusterEvent) -> pb::ClusterEvent {
    match event {
        ClusterEvent::LeaderChanged { old, new, time } => pb::ClusterEvent {
            time_ms: *time,
            kind: pb::cluster_event::Kind::LeaderChanged as i32,
            old_leader_id: old.clone().unwrap_or_default(),
            new_leader_id: new.clone().unwrap_or_default(),
            message: String::new(),
        },
    }
}

impl From<ProposeError> for NodeError {
    fn from(e: ProposeError) -> Self {
        NodeError::Failed(e.to_string())
    }
}
