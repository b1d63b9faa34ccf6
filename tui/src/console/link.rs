//! The console's link to the cluster: which manager it talks to, and where
//! it goes when that manager dies.
//!
//! Other managers are reached over TCP with operator credentials: those of
//! `--tls-dir` when the console was opened with `--host`, or, when it was
//! opened on a node's local socket, a certificate that node issues at once
//! and that lives only in this process's memory. The manager the console
//! was opened on is always tried first, so it comes back to it when it
//! returns.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use shoal_proto::transport::OperatorCredentials;
use shoal_proto::v1 as pb;
use shoal_proto::v1::control_client::ControlClient;
use tonic::transport::Channel;

use crate::cli::Target;

type Client = ControlClient<Channel>;

/// How long one manager gets to answer before the next is tried.
const ATTEMPT: Duration = Duration::from_secs(2);

pub struct Link {
    target: Target,
    current: Mutex<Client>,
    /// The manager followed since a failover; `None` while on the node the
    /// console was opened on.
    elsewhere: Mutex<Option<String>>,
    credentials: Mutex<Option<Arc<OperatorCredentials>>>,
    /// Managers' TCP addresses, as the last `Info` listed them.
    managers: Mutex<Vec<String>>,
}

impl Link {
    pub async fn open(target: &Target) -> anyhow::Result<Arc<Link>> {
        let client = target.connect().await?;
        let credentials = match &target.host {
            Some(_) => target.operator_credentials().ok().map(Arc::new),
            None => None,
        };
        Ok(Arc::new(Link {
            target: target.clone(),
            current: Mutex::new(client),
            elsewhere: Mutex::new(None),
            credentials: Mutex::new(credentials),
            managers: Mutex::new(Vec::new()),
        }))
    }

    pub fn client(&self) -> Client {
        self.current.lock().clone()
    }

    /// The node the console was opened on: unlocking is for that node,
    /// whichever manager the console is following.
    pub async fn opened_on(&self) -> anyhow::Result<Client> {
        self.target.connect().await
    }

    /// Remembers the managers `info` lists, and on a local socket asks the
    /// node for in-memory operator credentials once it is an active
    /// manager (a locked or worker node cannot issue them).
    pub async fn learn(&self, info: &pb::InfoResponse) {
        let mut managers: Vec<String> = info
            .manager_list
            .iter()
            .map(|m| m.addr.clone())
            .chain(info.manager_addrs.iter().cloned())
            .filter(|addr| !addr.is_empty())
            .collect();
        managers.dedup();
        *self.managers.lock() = managers;
        let wants_credentials = self.target.host.is_none()
            && self.credentials.lock().is_none()
            && info.state == pb::LocalNodeState::Active as i32
            && info.role == pb::NodeRole::Manager as i32;
        if !wants_credentials {
            return;
        }
        // Operator names allow letters, digits, '-' and '_' only.
        let name: String = format!("console-{}", info.hostname)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        let request = pb::IssueOperatorCertificateRequest { name };
        if let Ok(issued) = self.client().issue_operator_certificate(request).await {
            let issued = issued.into_inner();
            if let Ok(credentials) = OperatorCredentials::from_pem(
                &issued.root_ca_pem,
                &issued.certificate_pem,
                &issued.key_pem,
            ) {
                *self.credentials.lock() = Some(Arc::new(credentials));
            }
        }
    }

    /// After the current manager failed: connects to the first manager
    /// that answers as an active manager, the one the console was opened
    /// on first. Returns the manager's name when the link moved to another
    /// one (or back), `None` when it stayed or no manager answers.
    pub async fn reconnect(&self) -> Option<String> {
        // The node the console was opened on is kept whenever it answers,
        // even locked: its unlock screen is what the operator needs then.
        if let Ok(Ok(client)) = tokio::time::timeout(ATTEMPT, self.target.connect()).await
            && let Some(info) = info_of(client.clone()).await
        {
            let name = format!("{} ({})", info.hostname, self.target.describe());
            *self.current.lock() = client;
            let was_elsewhere = self.elsewhere.lock().take().is_some();
            return was_elsewhere.then_some(name);
        }
        let credentials = self.credentials.lock().clone()?;
        let managers = self.managers.lock().clone();
        for addr in managers {
            let Ok(Ok(channel)) =
                tokio::time::timeout(ATTEMPT, credentials.connect_manager(&addr)).await
            else {
                continue;
            };
            let client = ControlClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
            if let Some(name) = answers(client.clone(), &addr).await {
                *self.current.lock() = client;
                let previous = self.elsewhere.lock().replace(name.clone());
                return (previous.as_ref() != Some(&name)).then_some(name);
            }
        }
        None
    }
}

async fn info_of(mut client: Client) -> Option<pb::InfoResponse> {
    let info = tokio::time::timeout(ATTEMPT, client.info(pb::InfoRequest {}))
        .await
        .ok()?
        .ok()?;
    Some(info.into_inner())
}

/// Whether the node behind `client` is an active manager; its name if so.
async fn answers(client: Client, addr: &str) -> Option<String> {
    let info = info_of(client).await?;
    let usable = info.state == pb::LocalNodeState::Active as i32
        && info.role == pb::NodeRole::Manager as i32;
    usable.then(|| format!("{} ({addr})", info.hostname))
}
