//! Raft's client side: how a manager sends append-entries, votes and
//! snapshot chunks to its peers, over the `Raft` gRPC service with mutual
//! TLS. Payloads are openraft's own messages encoded with postcard; only
//! this module and the raft service know that encoding.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_proto::v1::RaftPayload;
use shoal_proto::v1::raft_client::RaftClient;
use tonic::transport::Channel;

use super::log_store::RaftDb;
use super::pipeline::{Backlog, Follower, Pipeline};
use super::types::{
    Entry, LogId, RaftId, RaftMember, TypeConfig, Vote, entry_encoding, remember_entry_encoding,
};
use crate::metrics::METRICS;
use crate::pki::tls::NodeTls;

/// Raft messages can carry large batches; gRPC's default 4 MiB cap is too
/// small for a batch of big transactions.
pub const MAX_RAFT_MESSAGE: usize = 64 * 1024 * 1024;

/// Ops one append-entries message carries at most (one entry may carry
/// more). openraft gives an append the heartbeat interval to complete,
/// encoding, sending and the peer's durable write included; a catching-up
/// peer offered 256 entries of 1,000 ops could never finish one in time,
/// and would stay behind forever.
pub(super) const APPEND_OPS: usize = 2_000;

/// How many of `entries`, from the first, fit in `budget` ops (at least
/// one, so that progress is always possible).
pub(super) fn entries_within(entries: &[super::types::Entry], budget: usize) -> usize {
    let mut ops = 0;
    let mut fitting = 0;
    for entry in entries {
        ops += super::types::entry_ops(entry);
        if ops > budget && fitting > 0 {
            break;
        }
        fitting += 1;
    }
    fitting
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    postcard::to_stdvec(value).map_err(encoding_failed)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(bytes).map_err(decoding_failed)
}

fn encoding_failed(e: postcard::Error) -> WireError {
    WireError(format!("encoding a raft message: {e}"))
}

fn decoding_failed(e: postcard::Error) -> WireError {
    WireError(format!("decoding a raft message: {e}"))
}

/// Encodes an append-entries message exactly as [`encode`] would, each
/// entry from the encoding it carries (see `types::entry_encoding`): the
/// leader encodes an entry once, not once per follower.
pub fn encode_append(request: &AppendEntriesRequest<TypeConfig>) -> Result<Vec<u8>, WireError> {
    // postcard writes a struct's fields in declaration order, a sequence as
    // its length then its items: openraft declares vote, prev_log_id,
    // entries, leader_commit (a test holds this to postcard's own output).
    let mut out =
        postcard::to_stdvec(&(&request.vote, &request.prev_log_id)).map_err(encoding_failed)?;
    out = postcard::to_extend(&request.entries.len(), out).map_err(encoding_failed)?;
    for entry in &request.entries {
        out.extend_from_slice(&entry_encoding(entry).map_err(encoding_failed)?);
    }
    postcard::to_extend(&request.leader_commit, out).map_err(encoding_failed)
}

/// Decodes what [`encode_append`] made, each entry keeping the bytes it
/// came in: the follower's log store writes those instead of encoding the
/// entry again.
pub fn decode_append(bytes: &[u8]) -> Result<AppendEntriesRequest<TypeConfig>, WireError> {
    let ((vote, prev_log_id), mut rest): ((Vote, Option<LogId>), _) =
        postcard::take_from_bytes(bytes).map_err(decoding_failed)?;
    let count: usize;
    (count, rest) = postcard::take_from_bytes(rest).map_err(decoding_failed)?;
    // Each entry takes a byte at least: a count beyond that is corrupt, and
    // must not size an allocation.
    let mut entries = Vec::with_capacity(count.min(rest.len()));
    for _ in 0..count {
        let (mut entry, after): (Entry, _) =
            postcard::take_from_bytes(rest).map_err(decoding_failed)?;
        let used = rest.len() - after.len();
        remember_entry_encoding(&mut entry, Bytes::copy_from_slice(&rest[..used]));
        entries.push(entry);
        rest = after;
    }
    let leader_commit = postcard::from_bytes(rest).map_err(decoding_failed)?;
    Ok(AppendEntriesRequest {
        vote,
        prev_log_id,
        entries,
        leader_commit,
    })
}

/// When this manager last heard from each peer (either direction), by node
/// id: how "N of M managers reachable" is counted.
#[derive(Default)]
pub struct PeerContacts {
    last: Mutex<HashMap<String, Instant>>,
}

impl PeerContacts {
    pub fn saw(&self, node_id: &str) {
        self.last.lock().insert(node_id.to_string(), Instant::now());
    }

    /// Whether `node_id` was heard from within `window`.
    pub fn recently(&self, node_id: &str, window: Duration) -> bool {
        self.last
            .lock()
            .get(node_id)
            .is_some_and(|t| t.elapsed() <= window)
    }
}

/// Makes a connection per peer; channels reconnect by themselves.
#[derive(Clone)]
pub struct Network {
    tls: Arc<NodeTls>,
    contacts: Arc<PeerContacts>,
    /// This manager's log, which pipelines follow.
    log: RaftDb,
    /// Writes waiting for the next entry, which pipelines look at.
    backlog: Backlog,
}

impl Network {
    pub fn new(
        tls: Arc<NodeTls>,
        contacts: Arc<PeerContacts>,
        log: RaftDb,
        backlog: Backlog,
    ) -> Self {
        Network {
            tls,
            contacts,
            log,
            backlog,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: RaftId, node: &RaftMember) -> PeerConnection {
        let channel = shoal_proto::transport::connect_tls_lazy(
            &node.addr,
            self.tls.client_config(),
            shoal_proto::MANAGER_SERVER_NAME,
        );
        PeerConnection {
            peer: Peer {
                target,
                member: node.clone(),
                client: channel.ok().map(|c| {
                    RaftClient::new(c)
                        .max_decoding_message_size(MAX_RAFT_MESSAGE)
                        .max_encoding_message_size(MAX_RAFT_MESSAGE)
                }),
                contacts: self.contacts.clone(),
            },
            outliving: None,
            log: self.log.clone(),
            backlog: self.backlog.clone(),
            pipeline: None,
            refuses_streams: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// How long an append may run on after openraft stopped waiting for it.
const OUTLIVING_APPEND_DEADLINE: Duration = Duration::from_secs(5);

/// The connection raft replicates to one peer through.
///
/// openraft gives an append one heartbeat interval (50 ms) and then sends
/// it again. On a loaded machine an append of a few thousand ops can take
/// longer; cancelled every time, it would never land, and the peer would
/// stay behind for good. So an append with entries runs as a task of its
/// own that outlives openraft's deadline, and openraft's next attempt at
/// the same entries waits for that one instead of starting over.
///
/// Once an append succeeds, a [`Pipeline`] streams the leader's next
/// entries ahead of openraft's calls, which it then answers.
pub struct PeerConnection {
    peer: Peer,
    outliving: Option<OutlivingAppend>,
    log: RaftDb,
    backlog: Backlog,
    pipeline: Option<Pipeline>,
    refuses_streams: Arc<AtomicBool>,
}

/// Which entries an append carries, for whom: two appends with the same
/// key ask the peer the same thing (the commit index they carry may
/// differ, and the peer learns it with the next message).
type AppendKey = (Vote, Option<LogId>, Option<LogId>);

type AppendResult = RpcResult<AppendEntriesResponse<RaftId>, openraft::error::Infallible>;

struct OutlivingAppend {
    key: AppendKey,
    task: tokio::task::JoinHandle<AppendResult>,
}

/// One peer's address and client; cheap to clone into a task.
#[derive(Clone)]
struct Peer {
    target: RaftId,
    member: RaftMember,
    /// None when the address does not parse; every call then fails as
    /// unreachable, which raft handles by backing off.
    client: Option<RaftClient<Channel>>,
    contacts: Arc<PeerContacts>,
}

type RpcResult<T, E> = Result<T, RPCError<RaftId, RaftMember, RaftError<RaftId, E>>>;

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            let error = WireError(format!(
                "invalid address {:?} for manager",
                self.member.addr
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&error)));
        };
        let data = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let payload = RaftPayload { data };
        let ttl = option.hard_ttl();
        let future = async {
            match method {
                Method::Append => client.append_entries(payload).await,
                Method::Vote => client.vote(payload).await,
                Method::Snapshot => client.install_snapshot(payload).await,
            }
        };
        let response = match tokio::time::timeout(ttl, future).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Err(status_to_rpc_error(&status)),
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action: method.action(),
                    id: 0,
                    target: self.target,
                    timeout: ttl,
                }));
            }
        };
        self.contacts.saw(&self.member.node_id);
        let result: Result<Resp, RaftError<RaftId, E>> =
            decode(&response.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.member.clone(),
                e,
            ))
        })
    }
}

#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

impl Method {
    fn action(self) -> openraft::RPCTypes {
        match self {
            Method::Append => openraft::RPCTypes::AppendEntries,
            Method::Vote => openraft::RPCTypes::Vote,
            Method::Snapshot => openraft::RPCTypes::InstallSnapshot,
        }
    }
}

/// A peer that cannot be connected to is unreachable (raft backs off); any
/// other failure is a plain network error (raft retries).
fn status_to_rpc_error<E: std::error::Error>(
    status: &tonic::Status,
) -> RPCError<RaftId, RaftMember, RaftError<RaftId, E>> {
    let error = WireError(format!("{}: {}", status.code(), status.message()));
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::PermissionDenied
        | tonic::Code::Unauthenticated
        | tonic::Code::FailedPrecondition => RPCError::Unreachable(Unreachable::new(&error)),
        _ => RPCError::Network(NetworkError::new(&error)),
    }
}

impl PeerConnection {
    /// Sends `rpc`, whose last entry is `last`, as a task that outlives
    /// openraft's deadline (see [`PeerConnection`]).
    async fn append_outliving(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        last: LogId,
    ) -> AppendResult {
        let key: AppendKey = (rpc.vote, rpc.prev_log_id, Some(last));
        if self.outliving.as_ref().is_some_and(|a| a.key != key) {
            // A different request: the one still running goes on alone,
            // harmlessly, until it ends.
            self.outliving = None;
        }
        let outliving = self.outliving.get_or_insert_with(|| {
            let mut peer = self.peer.clone();
            let option = RPCOption::new(OUTLIVING_APPEND_DEADLINE);
            let task = tokio::spawn(async move { peer.call(Method::Append, &rpc, &option).await });
            OutlivingAppend { key, task }
        });
        // If openraft's deadline cancels this wait, the task runs on.
        let result = (&mut outliving.task).await;
        self.outliving = None;
        match result {
            Ok(outcome) => outcome,
            Err(e) => Err(RPCError::Network(NetworkError::new(&WireError(format!(
                "append task failed: {e}"
            ))))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<RaftId>, openraft::error::Infallible> {
        let fitting = entries_within(&rpc.entries, APPEND_OPS);
        if fitting < rpc.entries.len() {
            // openraft sends the rest in later messages.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fitting as u64),
            ));
        }
        let Some(last) = rpc.entries.last().map(|e| e.log_id) else {
            // A heartbeat. openraft sends one to every follower for each
            // entry it commits, to share the committed index: on the stream
            // that costs one message instead of a call.
            if let Some(pipeline) = &self.pipeline
                && pipeline.serves(&rpc)
                && pipeline.acknowledges_commit_later(rpc.leader_commit)
            {
                if pipeline.commit_acknowledged(rpc.leader_commit).await {
                    METRICS
                        .raft_commits_streamed
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(AppendEntriesResponse::Success);
                }
                self.pipeline = None;
            }
            // Any other heartbeat: small, and worthless once late. A conflict
            // or a higher vote means the follower is not where a stream
            // assumed: the stream stops (a failed call says nothing of that).
            let result = self.peer.call(Method::Append, &rpc, &option).await;
            if result
                .as_ref()
                .is_ok_and(|r| !matches!(r, AppendEntriesResponse::Success))
            {
                self.pipeline = None;
            }
            return result;
        };
        if let Some(pipeline) = &self.pipeline {
            if pipeline.serves(&rpc) && pipeline.acknowledged(last).await {
                pipeline.share_commit(rpc.leader_commit);
                METRICS
                    .raft_appends_streamed
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(AppendEntriesResponse::Success);
            }
            self.pipeline = None;
        }
        let vote = rpc.vote;
        let result = self.append_outliving(rpc, last).await;
        if !matches!(result, Ok(AppendEntriesResponse::Success)) {
            return result;
        }
        METRICS.raft_appends_called.fetch_add(1, Ordering::Relaxed);
        if let Some(client) = self.peer.client.clone() {
            let follower = Follower {
                client,
                node_id: self.peer.member.node_id.clone(),
                contacts: self.peer.contacts.clone(),
                refuses_streams: self.refuses_streams.clone(),
            };
            self.pipeline =
                Pipeline::start(follower, self.log.clone(), self.backlog.clone(), vote, last);
        }
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<RaftId>, InstallSnapshotError> {
        self.peer.call(Method::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<RaftId>, openraft::error::Infallible> {
        self.peer.call(Method::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A dead peer is retried often enough that it rejoins quickly once
        // back, rarely enough not to spin.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::raft::types::{Membership, Proposal, prepare_entry};
    use crate::store::Transaction;
    use crate::store::objects::{Meta, Service, ServiceSpec};

    fn request() -> AppendEntriesRequest<TypeConfig> {
        let log_id = |index| LogId::new(CommittedLeaderId::new(3, 7), index);
        let service = |name: &str| Service {
            meta: Meta::new(format!("id-{name}"), 1),
            spec: ServiceSpec {
                name: name.into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let member = RaftMember {
            addr: "127.0.0.1:4701".into(),
            node_id: "n1".into(),
        };
        let membership = Membership::new(vec![BTreeSet::from([7])], BTreeMap::from([(7, member)]));
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 7),
            prev_log_id: Some(log_id(40)),
            entries: vec![
                Entry {
                    log_id: log_id(41),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(42),
                    payload: EntryPayload::Normal(Proposal::new(vec![
                        Transaction::new(5).create(service("web")),
                        Transaction::new(6).create(service("api")),
                    ])),
                },
                Entry {
                    log_id: log_id(43),
                    payload: EntryPayload::Membership(membership),
                },
            ],
            leader_commit: Some(log_id(39)),
        }
    }

    #[test]
    fn an_append_encodes_as_postcard_would_with_or_without_kept_encodings() {
        let mut request = request();
        assert_eq!(encode_append(&request).unwrap(), encode(&request).unwrap());
        for entry in &mut request.entries {
            prepare_entry(entry).unwrap();
        }
        assert_eq!(encode_append(&request).unwrap(), encode(&request).unwrap());
    }

    #[test]
    fn a_decoded_append_keeps_each_entrys_own_bytes() {
        let plain = encode(&request()).unwrap();
        let decoded = decode_append(&plain).unwrap();
        assert_eq!(encode(&decoded).unwrap(), plain);
        for entry in &decoded.entries {
            let kept = entry_encoding(entry).unwrap();
            assert_eq!(kept.as_ref(), postcard::to_stdvec(entry).unwrap());
        }
        assert!(decode_append(&plain[..plain.len() - 3]).is_err());
        // A count of entries far beyond the message is an error, not an
        // allocation.
        let mut corrupt = postcard::to_stdvec(&(request().vote, request().prev_log_id)).unwrap();
        corrupt.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode_append(&corrupt).is_err());
    }
}
