//! Shoal's wire: the protobuf messages and gRPC services every Shoal program
//! speaks, and the client transports that reach them.
//!
//! - [`v1`] is generated from `proto/shoal/v1/*.proto` at build time (pure
//!   Rust, no `protoc`). `Control` is the public operator API; `Raft`,
//!   `Dispatcher` and `Ca` are the cluster's internal services. Its clients
//!   and servers encode with [`codec::SmallBufferCodec`].
//! - [`transport`] dials a node's local unix socket or a manager over mutual
//!   TLS, and loads the operator credentials `shoal --host` uses.
//!
//! This is the only crate that knows protobuf: the agent converts these
//! types to its domain types at its service edge, and the console works on
//! them directly.

pub mod codec;
pub mod transport;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}

/// Managers that must be reachable for a swarm of `managers` to elect a
/// leader and commit writes: a majority. The agent's refusals (a leave or
/// a demotion that would break it), `shoal info`'s fault tolerance and the
/// CLI's advice after a leave all count with it.
pub fn quorum(managers: usize) -> usize {
    managers / 2 + 1
}

/// Runtime threads for each of `agents` agents sharing one machine
/// (`shoald --threads`): its cores split between them, at least one each;
/// the cores are those this process may use (its CPU affinity and cgroup
/// quota count). An agent alone gets them all, shoald's default. Where
/// several agents share the cores, their threads (one per core each) mostly
/// wake and preempt one another: three managers on two cores made 12% more
/// small writes with one thread each (`raft-writes`, 6 alternated pairs:
/// 15,300 against 13,600 writes/s, at 110 against 125 µs CPU per write).
pub fn threads_per_agent(agents: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / agents.max(1)).max(1)
}

/// Swarm's defaults for what `service create` leaves unsaid. Protobuf
/// cannot tell an unset number from 0, so a client building a new spec
/// starts from these, and the store's defaults are the same numbers.
pub mod defaults {
    use super::v1 as pb;

    /// Tasks replaced at once by a rolling update or rollback.
    pub const UPDATE_PARALLELISM: u64 = 1;
    /// How long an updated task is watched for failure.
    pub const UPDATE_MONITOR_MS: u64 = 5_000;
    /// Wait before a failed or exited task is replaced.
    pub const RESTART_DELAY_MS: u64 = 5_000;

    pub fn update_config() -> pb::UpdateConfig {
        pb::UpdateConfig {
            parallelism: UPDATE_PARALLELISM,
            delay_ms: 0,
            failure_action: pb::FailureAction::Pause as i32,
            monitor_ms: UPDATE_MONITOR_MS,
            max_failure_ratio: 0.0,
            order: pb::UpdateOrder::StopFirst as i32,
        }
    }

    pub fn restart_policy() -> pb::RestartPolicy {
        pb::RestartPolicy {
            condition: pb::RestartCondition::Any as i32,
            delay_ms: RESTART_DELAY_MS,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

/// `shoal --version` and `shoald --version`: the release and the commit
/// built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SHOAL_GIT_COMMIT"),
    ")"
);

/// The DNS name every manager certificate carries; clients verify managers
/// against it because nodes are reached by IP and may move.
pub const MANAGER_SERVER_NAME: &str = "shoal-manager";
/// The DNS name every worker certificate carries.
pub const WORKER_SERVER_NAME: &str = "shoal-worker";
/// Subject organizational unit of an operator certificate.
pub const OPERATOR_ROLE: &str = "shoal-operator";
