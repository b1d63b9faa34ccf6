//! Raft: the replicated log behind the store.
//!
//! - [`types`]: openraft's type configuration.
//! - [`log_store`]: the log and vote in fjall, encrypted at rest, appended
//!   durably (fdatasync) before raft is told.
//! - [`state_machine`]: applies entries to the in-memory [`Store`] and keeps
//!   its snapshots (encrypted, in fjall).
//!
//! [`Store`]: crate::store::Store

pub mod crypt;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;
