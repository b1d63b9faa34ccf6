//! The Shoal node agent, `shoald`.
//!
//! Every node runs one agent. It starts inactive; `swarm init` or `join` on
//! its local control socket makes it a manager or a worker.
//!
//! - [`store`]: the cluster's objects, in memory, changed only by raft.
//! - [`raft`]: the replicated, durable log (openraft + fjall).
//! - [`secret`], [`ids`]: small shared vocabulary.
//! - [`daemon`]: config file, logging and systemd for the `shoald` binary.
//! - [`metrics`]: Prometheus counters and the `--metrics-addr` endpoint.
#![forbid(unsafe_code)]

pub mod api;
pub mod daemon;
pub mod ids;
pub mod manager;
pub mod metrics;
pub mod node;
pub mod pki;
pub mod raft;
pub mod secret;
pub mod store;
#[cfg(test)]
mod testing;
pub mod worker;
