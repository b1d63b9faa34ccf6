//! `shoal swarm ...`: create, join, leave, lock and configure the cluster.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use shoal_proto::transport::{OPERATOR_CA_FILE, OPERATOR_CERT_FILE, OPERATOR_KEY_FILE};
use shoal_proto::v1 as pb;

use super::output::{parse_duration, short};
use super::{Target, rpc_error};

#[derive(Subcommand)]
pub enum SwarmCommand {
    /// Make this node the first manager of a new swarm.
    Init(InitArgs),
    /// Join a swarm as a worker or manager, as the token says.
    Join(JoinArgs),
    /// Show (or rotate) the command that joins a node.
    JoinToken(JoinTokenArgs),
    /// Leave the swarm.
    Leave {
        /// Leave even if this breaks quorum or removes the last manager.
        #[arg(long, short)]
        force: bool,
    },
    /// Unlock a locked manager (reads the key from stdin).
    Unlock,
    /// Show (or rotate) the key that unlocks managers.
    UnlockKey {
        /// Only the key.
        #[arg(long, short)]
        quiet: bool,
        /// Make a new key; the old one no longer unlocks.
        #[arg(long)]
        rotate: bool,
    },
    /// Change the swarm's settings.
    Update(UpdateArgs),
    /// Certificates for operators.
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Issue a certificate that lets an operator use `shoal --host`.
    OperatorCert {
        /// Who the certificate is for (shown in audit logs).
        #[arg(long, default_value = "operator")]
        name: String,
        /// Directory to write cert.pem, key.pem and ca.pem into.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Settings accepted by both `init` and `update`.
#[derive(Args, Default)]
pub struct SettingsArgs {
    /// Encrypt managers' keys at rest; they need the unlock key after a
    /// restart.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    autolock: Option<bool>,
    /// Task history kept per slot.
    #[arg(long)]
    task_history_limit: Option<u32>,
    /// How often nodes report (e.g. 1s).
    #[arg(long, value_parser = parse_duration)]
    dispatcher_heartbeat: Option<Duration>,
    /// Validity of node certificates (e.g. 2160h).
    #[arg(long, value_parser = parse_duration)]
    cert_expiry: Option<Duration>,
    /// Raft entries between snapshots.
    #[arg(long)]
    snapshot_interval: Option<u64>,
}

impl SettingsArgs {
    fn apply(&self, spec: &mut pb::ClusterSpec) {
        if let Some(on) = self.autolock {
            spec.autolock = on;
        }
        if let Some(limit) = self.task_history_limit {
            spec.task_history_retention = limit;
        }
        if let Some(period) = self.dispatcher_heartbeat {
            spec.heartbeat_period_ms = period.as_millis() as u64;
        }
        if let Some(expiry) = self.cert_expiry {
            spec.node_cert_expiry_s = expiry.as_secs();
        }
        if let Some(interval) = self.snapshot_interval {
            spec.snapshot_interval = interval;
        }
    }
}

#[derive(Args)]
pub struct InitArgs {
    /// Address other nodes reach this one at (HOST:PORT).
    #[arg(long)]
    advertise_addr: String,
    /// Address to listen on; defaults to the advertised one.
    #[arg(long)]
    listen_addr: Option<String>,
    /// On a manager that lost quorum: keep the store and become the only
    /// manager of the swarm.
    #[arg(long)]
    force_new_cluster: bool,
    #[command(flatten)]
    settings: SettingsArgs,
}

#[derive(Args)]
pub struct JoinArgs {
    /// The join token (SWMTKN-1-…) from 'shoal swarm join-token'; it
    /// decides the role.
    #[arg(long)]
    token: String,
    /// Address other nodes reach this one at (HOST:PORT).
    #[arg(long)]
    advertise_addr: Option<String>,
    /// Address to listen on; defaults to the advertised one.
    #[arg(long)]
    listen_addr: Option<String>,
    /// A manager of the swarm (HOST:PORT).
    manager_addr: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JoinRole {
    Worker,
    Manager,
}

#[derive(Args)]
pub struct JoinTokenArgs {
    /// Print only the token.
    #[arg(long, short)]
    quiet: bool,
    /// Replace the token: the old one stops working for new joins.
    #[arg(long)]
    rotate: bool,
    role: JoinRole,
}

#[derive(Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    settings: SettingsArgs,
}

pub async fn run(target: &Target, command: SwarmCommand) -> anyhow::Result<()> {
    let mut client = target.connect().await?;
    let rpc = |s| rpc_error(target, s);
    match command {
        SwarmCommand::Init(args) => {
            let mut spec = pb::ClusterSpec::default();
            args.settings.apply(&mut spec);
            let response = client
                .swarm_init(pb::SwarmInitRequest {
                    advertise_addr: args.advertise_addr.clone(),
                    listen_addr: args.listen_addr.unwrap_or_default(),
                    force_new_cluster: args.force_new_cluster,
                    autolock: spec.autolock,
                    spec: Some(spec),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if args.force_new_cluster {
                println!(
                    "Swarm recovered: node ({}) is now the only manager; promote others to \
                     restore fault tolerance.",
                    response.node_id
                );
            } else {
                println!(
                    "Swarm initialized: current node ({}) is now a manager.\n",
                    response.node_id
                );
            }
            let worker = response.tokens.map(|t| t.worker).unwrap_or_default();
            if !worker.is_empty() {
                println!("To add a worker to this swarm, run the following command:\n");
                println!(
                    "    {}\n",
                    join_command(&worker, std::slice::from_ref(&args.advertise_addr))
                );
            }
            println!(
                "To add a manager to this swarm, run 'shoal swarm join-token manager' and follow \
                 the instructions."
            );
            print_unlock_key(&response.unlock_key);
        }
        SwarmCommand::Join(args) => {
            let response = client
                .swarm_join(pb::SwarmJoinRequest {
                    token: args.token,
                    remote_addr: args.manager_addr,
                    advertise_addr: args.advertise_addr.unwrap_or_default(),
                    listen_addr: args.listen_addr.unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let role = super::output::role_name(response.role);
            println!(
                "This node joined a swarm as a {role} (node {}).",
                short(&response.node_id)
            );
        }
        SwarmCommand::JoinToken(args) => {
            let response = if args.rotate {
                client
                    .rotate_join_token(pb::RotateJoinTokenRequest {
                        worker: args.role == JoinRole::Worker,
                        manager: args.role == JoinRole::Manager,
                    })
                    .await
            } else {
                client.get_join_tokens(pb::GetJoinTokensRequest {}).await
            }
            .map_err(rpc)?
            .into_inner();
            let tokens = response.tokens.unwrap_or_default();
            let (name, token) = match args.role {
                JoinRole::Worker => ("worker", tokens.worker),
                JoinRole::Manager => ("manager", tokens.manager),
            };
            if args.quiet {
                println!("{token}");
                return Ok(());
            }
            if args.rotate {
                println!("Successfully rotated {name} join token.\n");
            }
            println!("To add a {name} to this swarm, run the following command:\n");
            println!("    {}\n", join_command(&token, &response.manager_addrs));
        }
        SwarmCommand::Leave { force } => {
            // Read first: once this node has left, it knows no managers.
            let before = client.info(pb::InfoRequest {}).await.ok();
            client
                .swarm_leave(pb::SwarmLeaveRequest { force })
                .await
                .map_err(rpc)?;
            println!("Node left the swarm.");
            if let Some(info) = before.map(tonic::Response::into_inner)
                && info.role == pb::NodeRole::Manager as i32
                && info.managers > 1
            {
                println!(
                    "{}",
                    managers_left(info.managers - 1, info.reachable_managers.saturating_sub(1))
                );
            }
        }
        SwarmCommand::Unlock => {
            let key = read_unlock_key()?;
            client
                .swarm_unlock(pb::SwarmUnlockRequest { unlock_key: key })
                .await
                .map_err(rpc)?;
            println!("Manager unlocked.");
        }
        SwarmCommand::UnlockKey { quiet, rotate } => {
            let key = if rotate {
                client
                    .rotate_unlock_key(pb::RotateUnlockKeyRequest {})
                    .await
            } else {
                client.get_unlock_key(pb::GetUnlockKeyRequest {}).await
            }
            .map_err(rpc)?
            .into_inner()
            .unlock_key;
            if key.is_empty() {
                anyhow::bail!(
                    "autolock is off, so there is no unlock key; turn it on with 'shoal swarm \
                     update --autolock'"
                );
            }
            if quiet {
                println!("{key}");
            } else {
                if rotate {
                    println!("Successfully rotated manager unlock key.\n");
                }
                print_unlock_key(&key);
            }
        }
        SwarmCommand::Update(args) => {
            let current = client
                .get_cluster(pb::GetClusterRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .cluster
                .ok_or_else(|| anyhow::anyhow!("the manager returned no cluster settings"))?;
            let mut spec = current.spec.unwrap_or_default();
            args.settings.apply(&mut spec);
            let response = client
                .swarm_update(pb::SwarmUpdateRequest {
                    version: current.meta.map(|m| m.version).unwrap_or(0),
                    spec: Some(spec),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            println!("Swarm updated.");
            print_unlock_key(&response.unlock_key);
        }
        SwarmCommand::Ca(CaCommand::OperatorCert { name, out }) => {
            let response = client
                .issue_operator_certificate(pb::IssueOperatorCertificateRequest { name })
                .await
                .map_err(rpc)?
                .into_inner();
            write_credentials(&out, &response)?;
            let addr = response
                .manager_addrs
                .first()
                .cloned()
                .unwrap_or_else(|| "MANAGER_ADDR".into());
            println!(
                "Operator credentials written to {dir}.\nUse them with:\n\n    shoal --host {addr} \
                 --tls-dir {dir} node ls",
                dir = out.display()
            );
        }
    }
    Ok(())
}

fn print_unlock_key(key: &str) {
    if key.is_empty() {
        return;
    }
    println!(
        "\nTo unlock a swarm manager after it restarts, run `shoal swarm unlock` and provide the \
         following key:\n\n    {key}\n\nRemember to store this key in a password manager, since \
         without it you will not be able to restart the manager."
    );
}

fn read_unlock_key() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Enter unlock key: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let key = line.trim().to_string();
    if key.is_empty() {
        anyhow::bail!(
            "no unlock key given; pass it on stdin, e.g. 'echo SWMKEY-1-… | shoal swarm unlock'"
        );
    }
    Ok(key)
}

fn write_credentials(
    dir: &std::path::Path,
    response: &pb::IssueOperatorCertificateResponse,
) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    for (name, content, mode) in [
        (OPERATOR_CERT_FILE, &response.certificate_pem, 0o644),
        (OPERATOR_KEY_FILE, &response.key_pem, 0o600),
        (OPERATOR_CA_FILE, &response.root_ca_pem, 0o644),
    ] {
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        file.write_all(content.as_bytes())?;
        file.sync_all()?;
    }
    Ok(())
}

/// The command that joins a node with `token` through the first of
/// `manager_addrs`, as `swarm join-token` prints it.
pub(crate) fn join_command(token: &str, manager_addrs: &[String]) -> String {
    let addr = manager_addrs.first().map_or("MANAGER_ADDR", String::as_str);
    format!("shoal swarm join --token {token} {addr}")
}

/// What the swarm can still lose once a manager has left it: `left`
/// managers, `reachable` of them answering.
fn managers_left(left: u32, reachable: u32) -> String {
    let quorum = shoal_proto::quorum(left as usize) as u32;
    let plural = |n: u32| if n == 1 { "manager" } else { "managers" };
    match reachable.checked_sub(quorum) {
        Some(0) => format!(
            "The swarm has {left} {} left and cannot lose another without losing its quorum: \
             promote a worker ('shoal node promote NODE') to make it fault tolerant again.",
            plural(left)
        ),
        Some(spare) => format!(
            "The swarm has {left} {} left and can lose {spare} more.",
            plural(left)
        ),
        None => format!(
            "The swarm has {left} {} left, {reachable} reachable: it has no quorum; bring \
             managers back or run 'shoal swarm init --force-new-cluster' on a survivor.",
            plural(left)
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_leaving_manager_is_told_what_the_swarm_can_still_lose() {
        let text = super::managers_left(2, 2);
        assert!(
            text.contains("2 managers left and cannot lose another"),
            "{text}"
        );
        assert!(text.contains("shoal node promote"), "{text}");
        assert_eq!(
            super::managers_left(4, 4),
            "The swarm has 4 managers left and can lose 1 more."
        );
        assert!(super::managers_left(2, 1).contains("no quorum"));
    }
}
