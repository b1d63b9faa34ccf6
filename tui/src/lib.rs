//! `shoal`: the Shoal console and command line. With no arguments it opens
//! the interactive console; with a subcommand it runs that operation
//! against a node's control API, the shape of `docker swarm|node|service`.
//!
//! - [`cli`]: argument parsing, the connection, and one module per command
//!   group; [`cli::output`] holds the names and formats both halves share.
//! - [`console`]: the live console (model fed by `Watch`, views, keys).
//! - [`fresh`]: writes that name the version they read, made again from a
//!   fresh read when the cluster changed the object meanwhile.
//!
//! Only `shoal-proto` is known here: the console and CLI are clients of
//! the public control API like any other.

pub mod cli;
pub mod console;
pub mod fresh;
