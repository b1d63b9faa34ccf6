//! Domain errors become gRPC statuses here, and only here. Codes follow
//! what a client can do about them: retry (unavailable, aborted), fix the
//! request (invalid argument, not found), or go elsewhere (failed
//! precondition).

use tonic::Status;

use crate::manager::ProposeError;
use crate::node::NodeError;
use crate::store::TxError;
use crate::store::query::LookupError;

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        match e {
            NodeError::Inactive
            | NodeError::AlreadyActive
            | NodeError::Locked
            | NodeError::NotLocked
            | NodeError::NotManager => Status::failed_precondition(e.to_string()),
            NodeError::Invalid(m) => Status::invalid_argument(m),
            NodeError::Failed(m) => Status::unavailable(m),
            NodeError::State(s) => Status::internal(s.to_string()),
        }
    }
}

impl From<ProposeError> for Status {
    fn from(e: ProposeError) -> Status {
        match e {
            ProposeError::Rejected(tx) => tx.into(),
            ProposeError::NoLeader { .. }
            | ProposeError::Raft(_)
            | ProposeError::Shutdown
            | ProposeError::RaftStopped(_) => Status::unavailable(e.to_string()),
            ProposeError::NotManager => Status::failed_precondition(e.to_string()),
            ProposeError::Timeout => Status::deadline_exceeded(e.to_string()),
        }
    }
}

impl From<TxError> for Status {
    fn from(e: TxError) -> Status {
        match e {
            TxError::Conflict { .. } => Status::aborted(e.to_string()),
            TxError::NotFound { .. } => Status::not_found(e.to_string()),
            TxError::Exists { .. } | TxError::NameInUse { .. } => {
                Status::already_exists(e.to_string())
            }
        }
    }
}

impl From<LookupError> for Status {
    fn from(e: LookupError) -> Status {
        match e {
            LookupError::NotFound { .. } => Status::not_found(e.to_string()),
            LookupError::Ambiguous { .. } => Status::invalid_argument(e.to_string()),
        }
    }
}
