//! The `Ca` service: every manager signs certificates with the root CA
//! key it holds in its store.
//!
//! - A joining node presents a join token: its role follows the token, a
//!   node object is created, and a certificate naming it is returned.
//! - A member renews with its current certificate: the new certificate's
//!   role follows the node's desired role (this is how promotion and
//!   demotion reach the node's identity).

use std::sync::Arc;
use std::time::Duration;

use shoal_proto::v1 as pb;
use shoal_proto::v1::ca_server::Ca;
use tonic::{Request, Response, Status};

use super::runtime::ManagerRuntime;
use crate::api::authz::{Caller, Trust, require};
use crate::ids::now_ms;
use crate::node::Agent;
use crate::pki::ca::CertificateAuthority;
use crate::pki::identity::{Identity, PeerRole};
use crate::pki::token::JoinToken;
use crate::secret::Secret;
use crate::store::*;

pub struct CaService {
    pub agent: Arc<Agent>,
}

fn authority(cluster: &Cluster) -> Result<CertificateAuthority, Status> {
    CertificateAuthority::from_pem(
        &cluster.root_ca.cert_pem,
        &Secret::new(cluster.root_ca.key_pem.clone()),
    )
    .map_err(|e| Status::internal(format!("the cluster's root CA is unusable: {e}")))
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn manager_addrs(tables: &Tables) -> Vec<String> {
    tables
        .nodes
        .iter()
        .filter(|n| n.role == Role::Manager)
        .filter_map(|n| n.manager_status.as_ref().map(|m| m.addr.clone()))
        .filter(|a| !a.is_empty())
        .collect()
}

impl CaService {
    async fn manager(&self) -> Result<Arc<ManagerRuntime>, Status> {
        Ok(self.agent.manager().await?)
    }

    async fn join(
        &self,
        manager: Arc<ManagerRuntime>,
        request: pb::IssueNodeCertificateRequest,
    ) -> Result<pb::IssueNodeCertificateResponse, Status> {
        let token = JoinToken::parse(&request.token)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cluster = manager
            .store
            .read()
            .cluster()
            .cloned()
            .ok_or_else(|| Status::unavailable("the cluster is still starting: retry"))?;
        let role = if same_secret(&token.expose(), &cluster.join_tokens.manager) {
            Role::Manager
        } else if same_secret(&token.expose(), &cluster.join_tokens.worker) {
            Role::Worker
        } else {
            return Err(Status::permission_denied(
                "the join token is not valid for this swarm (wrong, or rotated since it was \
                 issued): get the current one with 'shoal swarm join-token worker|manager'",
            ));
        };
        let now = now_ms();
        let node_id = crate::ids::new_id();
        let description: NodeDescription = request
            .description
            .as_ref()
            .map(Into::into)
            .unwrap_or_default();
        let raft_id = (role == Role::Manager).then(super::runtime::new_raft_id);
        let node = Node {
            meta: Meta::new(node_id.clone(), now),
            spec: NodeSpec {
                desired_role: role,
                ..Default::default()
            },
            description: description.clone(),
            status: NodeStatus {
                state: NodeState::Unknown,
                message: "joining".into(),
                addr: request.advertise_addr.clone(),
                timestamp: now,
            },
            // Managers hold the manager role once raft has them.
            role: Role::Worker,
            manager_status: raft_id.map(|raft_id| ManagerStatus {
                raft_id,
                addr: request.advertise_addr.clone(),
                reachability: Reachability::Unknown,
                locked: false,
            }),
        };
        let cert = authority(&cluster)?
            .sign_csr(
                &request.csr_pem,
                &Identity {
                    node_id: node_id.clone(),
                    role: if role == Role::Manager {
                        PeerRole::Manager
                    } else {
                        PeerRole::Worker
                    },
                    cluster_id: cluster.cluster_id.clone(),
                },
                Duration::from_secs(cluster.spec.node_cert_expiry_s),
            )
            .map_err(|e| Status::invalid_argument(format!("certificate request refused: {e}")))?;
        manager.propose(Transaction::new(now).create(node)).await?;
        tracing::info!(
            node_id,
            hostname = %description.hostname,
            role = role.name(),
            "node joined with a join token"
        );
        let tables = manager.store.read();
        Ok(pb::IssueNodeCertificateResponse {
            node_id,
            role: pb::NodeRole::from(role) as i32,
            cluster_id: cluster.cluster_id.clone(),
            certificate_pem: cert,
            root_ca_pem: cluster.root_ca.cert_pem.clone(),
            manager_addrs: manager_addrs(&tables),
            raft_id: raft_id.unwrap_or(0),
        })
    }

    async fn renew(
        &self,
        manager: Arc<ManagerRuntime>,
        identity: Identity,
        request: pb::IssueNodeCertificateRequest,
    ) -> Result<pb::IssueNodeCertificateResponse, Status> {
        let (cluster, mut node) = {
            let tables = manager.store.read();
            let cluster = tables
                .cluster()
                .cloned()
                .ok_or_else(|| Status::unavailable("the cluster is still starting: retry"))?;
            let node = tables
                .nodes
                .get(&identity.node_id)
                .cloned()
                .ok_or_else(|| {
                    Status::permission_denied(format!(
                        "node {} is not part of the cluster",
                        identity.node_id
                    ))
                })?;
            (cluster, (*node).clone())
        };
        let role = node.spec.desired_role;
        // A node being promoted gets its raft id now, recorded before the
        // certificate leaves so every manager agrees on it.
        let needs_raft_id =
            role == Role::Manager && node.manager_status.as_ref().is_none_or(|m| m.raft_id == 0);
        if needs_raft_id {
            let addr = if request.advertise_addr.is_empty() {
                node.status.addr.clone()
            } else {
                request.advertise_addr.clone()
            };
            node.manager_status = Some(ManagerStatus {
                raft_id: super::runtime::new_raft_id(),
                addr,
                reachability: Reachability::Unknown,
                locked: false,
            });
            node.meta.updated_at = now_ms();
            manager
                .propose(Transaction::new(now_ms()).update(node.clone()))
                .await?;
        }
        let cert = authority(&cluster)?
            .sign_csr(
                &request.csr_pem,
                &Identity {
                    node_id: identity.node_id.clone(),
                    role: if role == Role::Manager {
                        PeerRole::Manager
                    } else {
                        PeerRole::Worker
                    },
                    cluster_id: cluster.cluster_id.clone(),
                },
                Duration::from_secs(cluster.spec.node_cert_expiry_s),
            )
            .map_err(|e| Status::invalid_argument(format!("certificate request refused: {e}")))?;
        let tables = manager.store.read();
        Ok(pb::IssueNodeCertificateResponse {
            node_id: identity.node_id,
            role: pb::NodeRole::from(role) as i32,
            cluster_id: cluster.cluster_id.clone(),
            certificate_pem: cert,
            root_ca_pem: cluster.root_ca.cert_pem.clone(),
            manager_addrs: manager_addrs(&tables),
            raft_id: if role == Role::Manager {
                node.manager_status.as_ref().map_or(0, |m| m.raft_id)
            } else {
                0
            },
        })
    }
}

#[tonic::async_trait]
impl Ca for CaService {
    async fn get_root_certificate(
        &self,
        _request: Request<pb::GetRootCertificateRequest>,
    ) -> Result<Response<pb::GetRootCertificateResponse>, Status> {
        let manager = self.manager().await?;
        let tables = manager.store.read();
        let cluster = tables
            .cluster()
            .ok_or_else(|| Status::unavailable("the cluster is still starting: retry"))?;
        Ok(Response::new(pb::GetRootCertificateResponse {
            certificate_pem: cluster.root_ca.cert_pem.clone(),
        }))
    }

    async fn issue_node_certificate(
        &self,
        request: Request<pb::IssueNodeCertificateRequest>,
    ) -> Result<Response<pb::IssueNodeCertificateResponse>, Status> {
        let manager = self.manager().await?;
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let response = match caller {
            Caller::Peer(identity) if request.token.is_empty() => {
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
                        &Caller::Peer(identity.clone()),
                        &[PeerRole::Worker, PeerRole::Manager],
                        &Trust {
                            cluster_id: &cluster_id,
                            is_removed: &removed,
                        },
                    )?;
                }
                self.renew(manager, identity, request).await?
            }
            _ if !request.token.is_empty() => self.join(manager, request).await?,
            _ => {
                return Err(Status::unauthenticated(
                    "a join token or a node certificate of this cluster is required",
                ));
            }
        };
        Ok(Response::new(response))
    }
}
