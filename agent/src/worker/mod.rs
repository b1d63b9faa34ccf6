//! The worker: runs the tasks the leader assigns to this node.
pub mod executor;
