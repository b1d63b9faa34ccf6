//! A harness that runs real Shoal clusters on one machine: `shoald`
//! processes on 127.0.0.1 ports with temporary data directories, driven
//! through the `shoal` CLI and the gRPC API exactly as operators drive
//! them. Everything a test starts is torn down when its [`Cluster`] drops,
//! also when the test fails: processes are killed by pid, task containers
//! labelled with the cluster's node ids are removed.
//!
//! [`terminal`] drives the console in a real (tmux) terminal.
//!
//! The benchmarks in `src/bin/` use the same harness.

pub mod harness;
pub mod terminal;

pub use harness::*;
