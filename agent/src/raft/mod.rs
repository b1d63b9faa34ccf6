//! Raft: the replicated log behind the store.
//!
//! - [`types`]: openraft's type configuration.
//! - [`log_store`]: the log and vote in fjall, encrypted at rest, appended
//!   durably (fdatasync) before raft is told.
//! - [`network`]: append-entries, votes and snapshots to peers over mTLS
//!   gRPC; [`pipeline`]: a leader's new entries streamed to a follower
//!   ahead of openraft's one-at-a-time calls.
//! - [`state_machine`]: applies entries to the in-memory [`Store`] and keeps
//!   its snapshots (encrypted, in fjall).
//!
//! [`Store`]: crate::store::Store

pub mod crypt;
pub mod log_store;
pub mod network;
pub mod pipeline;
pub mod state_machine;
pub mod types;
