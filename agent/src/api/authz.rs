//! Who is calling, and may they. Every gRPC method starts by asking.
//!
//! - A call on the local unix socket is the local operator: file
//!   permissions on the socket are the authority.
//! - A call over TLS carries the verified client certificate's identity, or
//!   none (a joining node). Certificates of another cluster, and of removed
//!   nodes, are refused here.

use tonic::{Request, Status};

use crate::pki::identity::{Identity, PeerRole};
use crate::pki::tls::TlsConnectInfo;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The local control socket.
    Local,
    /// A verified certificate.
    Peer(Identity),
    /// TLS without a client certificate.
    Anonymous,
}

impl Caller {
    pub fn of<T>(request: &Request<T>) -> Caller {
        match request.extensions().get::<TlsConnectInfo>() {
            Some(info) => match &info.peer {
                Some(identity) => Caller::Peer(identity.clone()),
                None => Caller::Anonymous,
            },
            // Only the unix socket server runs without TLS.
            None => Caller::Local,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Caller::Local => "the local operator".into(),
            Caller::Peer(id) => format!("{} {}", role_name(id.role), id.node_id),
            Caller::Anonymous => "an unauthenticated client".into(),
        }
    }
}

fn role_name(role: PeerRole) -> &'static str {
    match role {
        PeerRole::Worker => "worker",
        PeerRole::Manager => "manager",
        PeerRole::Operator => "operator",
    }
}

/// What the cluster says about certificates right now.
pub struct Trust<'a> {
    pub cluster_id: &'a str,
    /// Removed nodes' ids: their certificates are refused.
    pub is_removed: &'a dyn Fn(&str) -> bool,
}

/// Checks that `caller` has one of `allowed` roles (the local operator is
/// always allowed) and belongs to this cluster.
pub fn require(caller: &Caller, allowed: &[PeerRole], trust: &Trust<'_>) -> Result<(), Status> {
    match caller {
        Caller::Local => Ok(()),
        Caller::Anonymous => Err(Status::unauthenticated(
            "a client certificate issued by this cluster is required",
        )),
        Caller::Peer(identity) => {
            if identity.cluster_id != trust.cluster_id {
                return Err(Status::permission_denied(format!(
                    "certificate belongs to cluster {}, not this one",
                    identity.cluster_id
                )));
            }
            if (trust.is_removed)(&identity.node_id) {
                return Err(Status::permission_denied(format!(
                    "node {} was removed from the cluster: its certificate is no longer accepted",
                    identity.node_id
                )));
            }
            if !allowed.contains(&identity.role) {
                return Err(Status::permission_denied(format!(
                    "{} may not call this method",
                    caller.describe()
                )));
            }
            Ok(())
        }
    }
}
