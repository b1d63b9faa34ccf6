//! The command line: argument parsing, the connection to a node, and
//! error reporting. Each command group lives in its own module.

mod demo;
mod events;
pub mod info;
pub(crate) mod node;
pub mod output;
pub(crate) mod service;
pub(crate) mod swarm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_proto::transport::{self, OperatorCredentials};
use shoal_proto::v1::control_client::ControlClient;
use tonic::transport::Channel;

/// The agent's socket when none is given; `shoald` listens there by
/// default.
pub const DEFAULT_SOCKET: &str = "/var/run/shoal/shoald.sock";

/// Where every command's help lists the options that apply to all of
/// them, apart from the command's own.
const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(
    name = "shoal",
    version = shoal_proto::VERSION,
    about = "Shoal: a container orchestrator and its console"
)]
pub struct Cli {
    /// The local agent's control socket.
    #[arg(
        long,
        global = true,
        env = "SHOAL_SOCKET",
        default_value = DEFAULT_SOCKET,
        help_heading = GLOBAL
    )]
    socket: PathBuf,
    /// Reach a manager over TCP (HOST:PORT) with operator credentials
    /// instead of the local socket.
    #[arg(long, global = true, env = "SHOAL_HOST", help_heading = GLOBAL)]
    host: Option<String>,
    /// Directory holding the operator credentials (cert.pem, key.pem,
    /// ca.pem) used with --host.
    #[arg(long, global = true, env = "SHOAL_TLS_DIR", help_heading = GLOBAL)]
    tls_dir: Option<PathBuf>,
    /// The console's colour theme: default, light, high-contrast,
    /// solarized, mono, or a theme file (also SHOAL_THEME, or `theme` in
    /// ~/.config/shoal/console.toml).
    #[arg(long, global = true, value_name = "NAME|FILE", help_heading = GLOBAL)]
    theme: Option<String>,
    /// With no command, the interactive console opens.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Show this node's state and the cluster's.
    Info(info::InfoArgs),
    /// Create, join, leave and configure the swarm.
    #[command(subcommand)]
    Swarm(swarm::SwarmCommand),
    /// Manage nodes.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Manage services.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Follow cluster events: nodes, tasks, updates, leadership.
    Events(events::EventsArgs),
    /// Run a local demo cluster (3 managers, 2 workers, sample services)
    /// in the console; `demo down` removes one kept with --keep.
    Demo(demo::DemoArgs),
    /// Print a shell completion script: `shoal completion bash >
    /// /etc/bash_completion.d/shoal`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Where the CLI connects.
#[derive(Clone)]
pub struct Target {
    pub socket: PathBuf,
    pub host: Option<String>,
    pub tls_dir: Option<PathBuf>,
}

impl Target {
    pub fn describe(&self) -> String {
        match &self.host {
            Some(host) => host.clone(),
            None => self.socket.display().to_string(),
        }
    }

    /// The operator credentials `--host` uses.
    pub fn operator_credentials(&self) -> anyhow::Result<OperatorCredentials> {
        let dir = self.tls_dir.clone().unwrap_or_else(default_tls_dir);
        OperatorCredentials::load(&dir).map_err(|e| {
            anyhow::anyhow!(
                "{e}; get credentials on a manager with 'shoal swarm ca operator-cert \
                 --out {}' and copy them here",
                dir.display()
            )
        })
    }

    pub async fn connect(&self) -> anyhow::Result<ControlClient<Channel>> {
        let channel = match &self.host {
            Some(host) => {
                let creds = self.operator_credentials()?;
                creds
                    .connect_manager(host)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}; is a manager listening at {host}?"))?
            }
            None => transport::connect_unix(&self.socket).await.map_err(|_| {
                anyhow::anyhow!(
                    "cannot reach the Shoal agent at {}: is shoald running? Start it, or point \
                     --socket (SHOAL_SOCKET) at its socket",
                    self.socket.display()
                )
            })?,
        };
        Ok(ControlClient::new(channel).max_decoding_message_size(256 * 1024 * 1024))
    }
}

fn default_tls_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".shoal")
        .join("tls")
}

/// Turns a gRPC status into the error the operator reads: the server's
/// message already names the object and the fix.
pub fn rpc_error(target: &Target, status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    // A status made on this side of the connection carries the transport
    // error as its source; one the server sent carries none, and its
    // message (say, a join that cannot reach the manager it was given)
    // is the server's to tell.
    let local = std::error::Error::source(&status).is_some();
    match status.code() {
        Code::Unavailable if local => anyhow::anyhow!(
            "lost the connection to {}: {}",
            target.describe(),
            status.message()
        ),
        Code::Unimplemented if status.message().is_empty() => {
            anyhow::anyhow!("{} does not support this operation", target.describe())
        }
        _ => anyhow::anyhow!("{}", status.message()),
    }
}

/// A write's error as the operator reads it: the cluster's refusal in
/// [`rpc_error`]'s words, anything else (a change that cannot be made) as
/// it is.
pub fn written_error(target: &Target, error: anyhow::Error) -> anyhow::Error {
    match error.downcast::<tonic::Status>() {
        Ok(status) => rpc_error(target, status),
        Err(other) => other,
    }
}

/// Generated into memory first: clap_complete panics on a write error,
/// and a closed pipe (`| head`) is not a reason to.
fn print_completion(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "shoal", &mut script);
    match std::io::stdout().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = Target {
        socket: cli.socket,
        host: cli.host,
        tls_dir: cli.tls_dir,
    };
    let console = crate::console::Options { theme: cli.theme };
    let result = runtime.block_on(async {
        match cli.command {
            None => crate::console::run(&target, &console).await,
            Some(Command::Info(args)) => info::run(&target, args).await,
            Some(Command::Swarm(command)) => swarm::run(&target, command).await,
            Some(Command::Node(command)) => node::run(&target, command).await,
            Some(Command::Service(command)) => service::run(&target, command).await,
            Some(Command::Events(args)) => events::run(&target, args).await,
            Some(Command::Demo(args)) => demo::run(args, &console).await,
            Some(Command::Completion { shell }) => print_completion(shell),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_unavailable_is_told_in_its_own_words() {
        let target = Target {
            socket: PathBuf::from("/run/shoal.sock"),
            host: None,
            tls_dir: None,
        };
        let status = tonic::Status::unavailable(
            "cannot reach 127.0.0.1:4799: transport error: check the manager address",
        );
        let error = rpc_error(&target, status).to_string();
        assert!(error.starts_with("cannot reach 127.0.0.1:4799"), "{error}");
        assert!(!error.contains("lost the connection"), "{error}");
    }
}
