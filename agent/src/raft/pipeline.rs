//! Pipelined replication: a leader streams its new entries to a follower as
//! they are appended, without waiting for the previous append to return.
//!
//! openraft 0.9 keeps one append-entries call in flight per follower, so an
//! entry appended while one is out waits a whole round trip before it even
//! leaves. A [`Pipeline`] follows the leader's log instead and sends each new
//! entry of the leader's term at once, on one ordered stream (the follower
//! takes the messages in the order sent). When openraft then asks to send
//! entries the stream already carried, its answer is the follower's
//! acknowledgement of them, which is often there already.
//!
//! Why this is safe: an append is idempotent for a follower whose log
//! matches (entries it holds with the same log ids are skipped); a stream
//! starts only from a log id that openraft's own call has just confirmed;
//! it carries only entries of the leader's own term, which that leader
//! never truncates; and an acknowledgement is the follower's, after its
//! sync, of exactly the entries of that message. Anything else on the
//! stream (a conflict, a higher vote, an error, silence) ends it, and
//! openraft's own calls go out as before and decide.
//!
//! openraft dates an answer to the moment it made the call, for the leader
//! lease; an answer from the stream can be older by the time between the
//! entry's append and openraft's call for it, milliseconds, far inside the
//! lease (and no answer at all comes from a follower cut off).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::RaftLogReader;
use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use shoal_proto::v1::RaftPayload;
use shoal_proto::v1::raft_client::RaftClient;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::log_store::RaftDb;
use super::network::{APPEND_OPS, PeerContacts, decode, encode_append, entries_within};
use super::types::{LogId, RaftId, TypeConfig, Vote};

/// Messages on the stream not yet answered, at most: enough to cover a
/// round trip at the rate a busy leader appends, few enough that a slow
/// follower is not buried.
const UNANSWERED: usize = 8;

/// Entries in one message at most (as openraft's `max_payload_entries`).
const MESSAGE_ENTRIES: u64 = 256;

/// How long a committed index with no entry to ride on waits for the
/// next entry, at most, when writes are already waiting for that entry.
/// Each entry's index otherwise costs each follower a message, its answer
/// and a turn of raft of their own; the next entry follows as soon as the
/// leader has applied this one, well within this.
const COMMIT_LINGER: Duration = Duration::from_millis(2);

/// Writes waiting at the leader for the next raft entry: while there are
/// some, the next entry follows the one being committed at once. Kept by
/// the leader's proposal batcher, read by the replication streams.
#[derive(Clone, Default)]
pub struct Backlog(Arc<std::sync::atomic::AtomicUsize>);

impl Backlog {
    pub fn add(&self, writes: usize) {
        self.0.fetch_add(writes, Ordering::Relaxed);
    }

    pub fn remove(&self, writes: usize) {
        self.0.fetch_sub(writes, Ordering::Relaxed);
    }

    /// Writes waiting.
    pub fn writes(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn next_entry_coming(&self) -> bool {
        self.writes() > 0
    }
}

/// A follower that leaves a message unanswered this long is taken to be
/// gone: the stream ends and openraft's own calls take over.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);

/// How far the follower has acknowledged the stream.
#[derive(Clone, Copy, Debug)]
struct Progress {
    /// The follower's log matches the leader's through here, durably.
    acked: LogId,
    /// The highest committed id an acknowledged message carried.
    commit_acked: Option<LogId>,
    /// Nothing more will be acknowledged.
    ended: bool,
}

/// The stream of one leader's new entries to one follower, for one vote.
/// Dropping it ends the stream.
pub struct Pipeline {
    vote: Vote,
    base: LogId,
    progress: watch::Receiver<Progress>,
    commit: watch::Sender<Option<LogId>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a pipeline needs of its follower.
pub struct Follower {
    pub client: RaftClient<Channel>,
    pub node_id: String,
    pub contacts: Arc<PeerContacts>,
    /// Set when the follower does not know the stream (a shoald from
    /// before it, during a rolling upgrade): openraft's calls alone serve
    /// it, without a refused stream after each.
    pub refuses_streams: Arc<AtomicBool>,
}

impl Pipeline {
    /// Starts streaming the entries after `base`, which openraft's own
    /// append under `vote` has just confirmed the follower holds. Returns
    /// None when there is nothing a stream may carry, `base` not being of
    /// the vote's term (a new leader's first appends replicate its
    /// predecessors' entries; they go through openraft's calls), or when
    /// the follower refuses streams.
    pub fn start(
        follower: Follower,
        log: RaftDb,
        backlog: Backlog,
        vote: Vote,
        base: LogId,
    ) -> Option<Pipeline> {
        if !vote.is_committed()
            || base.leader_id.term != vote.leader_id().term
            || follower.refuses_streams.load(Ordering::Relaxed)
        {
            return None;
        }
        let (progress_tx, progress) = watch::channel(Progress {
            acked: base,
            commit_acked: None,
            ended: false,
        });
        let (commit, commit_rx) = watch::channel(None);
        let sender = Sender {
            follower,
            appended: log.appended(),
            log,
            backlog,
            vote,
            sent: base,
            commit: commit_rx,
            progress: progress_tx,
        };
        let task = tokio::spawn(sender.run());
        Some(Pipeline {
            vote,
            base,
            progress,
            commit,
            task,
        })
    }

    /// Whether this stream can answer `rpc`: same vote, and openraft's view
    /// of the follower has not gone back before where the stream began (if
    /// it has, the follower's log is not what the stream assumed).
    pub fn serves(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        self.vote == rpc.vote && rpc.prev_log_id >= Some(self.base)
    }

    /// Waits until the follower has acknowledged entries through `last`;
    /// false if the stream ended first.
    pub async fn acknowledged(&self, last: LogId) -> bool {
        let mut progress = self.progress.clone();
        match progress
            .wait_for(|p| p.ended || p.acked.index >= last.index)
            .await
        {
            Ok(p) => p.acked.index >= last.index,
            Err(_) => false,
        }
    }

    /// Whether [`Pipeline::commit_acknowledged`] may answer for
    /// `committed`: only an id the follower has not acknowledged yet, so
    /// that the answer is one the follower gives after openraft's call
    /// (what openraft dates it by); an earlier acknowledgement would answer
    /// at once and pass for a fresh one.
    pub fn acknowledges_commit_later(&self, committed: Option<LogId>) -> bool {
        committed > self.progress.borrow().commit_acked
    }

    /// Tells the follower on the stream that entries through `committed`
    /// are committed, and waits until it has acknowledged a message that
    /// carried this; false if the stream ended first. openraft's heartbeat
    /// that would have told it, one unary call per follower for every
    /// committed entry, is answered by this instead.
    pub async fn commit_acknowledged(&self, committed: Option<LogId>) -> bool {
        self.share_commit(committed);
        let mut progress = self.progress.clone();
        match progress
            .wait_for(|p| p.ended || p.commit_acked >= committed)
            .await
        {
            Ok(p) => p.commit_acked >= committed,
            Err(_) => false,
        }
    }

    /// Makes sure the follower learns that entries through `committed` are
    /// committed: openraft's message that would have told it is answered
    /// here instead of being sent.
    pub fn share_commit(&self, committed: Option<LogId>) {
        self.commit.send_if_modified(|shared| {
            let newer = committed > *shared;
            if newer {
                *shared = committed;
            }
            newer
        });
    }
}

/// The task behind a [`Pipeline`]: sends, and reads the answers.
struct Sender {
    follower: Follower,
    log: RaftDb,
    backlog: Backlog,
    appended: watch::Receiver<Option<u64>>,
    vote: Vote,
    /// The last entry sent.
    sent: LogId,
    commit: watch::Receiver<Option<LogId>>,
    progress: watch::Sender<Progress>,
}

impl Sender {
    async fn run(mut self) {
        let ended = self.stream().await;
        tracing::debug!(follower = %self.follower.node_id, why = %ended, "replication stream ended");
        self.progress.send_modify(|p| p.ended = true);
    }

    /// Streams until something ends it; returns what did.
    async fn stream(&mut self) -> String {
        let (requests, outgoing) = mpsc::channel(UNANSWERED);
        let opened = tokio::time::timeout(
            ANSWER_DEADLINE,
            self.follower
                .client
                .append_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing)),
        )
        .await;
        let mut answers = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                if status.code() == tonic::Code::Unimplemented {
                    self.follower.refuses_streams.store(true, Ordering::Relaxed);
                }
                return format!("{}: {}", status.code(), status.message());
            }
            Err(_) => return "the follower did not take the stream".into(),
        };
        // The last entry and the committed id of each unanswered message,
        // and when it went.
        let mut unanswered: VecDeque<(LogId, Option<LogId>, Instant)> = VecDeque::new();
        let mut commit_sent = None;
        // Until when a committed index waits for an entry to ride on.
        let mut lingering: Option<Instant> = None;
        loop {
            while unanswered.len() < UNANSWERED {
                let next = match self.next_message(commit_sent, &mut lingering).await {
                    Ok(Some(next)) => next,
                    Ok(None) => break,
                    Err(why) => return why,
                };
                commit_sent = commit_sent.max(next.leader_commit);
                let through = next.entries.last().map_or(self.sent, |e| e.log_id);
                let payload = match encode_append(&next) {
                    Ok(data) => RaftPayload { data },
                    Err(e) => return e.to_string(),
                };
                if requests.send(payload).await.is_err() {
                    return "the stream closed".into();
                }
                self.sent = through;
                unanswered.push_back((through, next.leader_commit, Instant::now()));
            }
            let overdue = unanswered.front().map(|(_, _, at)| *at + ANSWER_DEADLINE);
            tokio::select! {
                changed = self.appended.changed() => {
                    if changed.is_err() {
                        return "the log closed".into();
                    }
                }
                changed = self.commit.changed() => {
                    if changed.is_err() {
                        return "replication stopped".into();
                    }
                }
                answer = answers.message() => {
                    let payload = match answer {
                        Ok(Some(payload)) => payload,
                        Ok(None) => return "the follower ended the stream".into(),
                        Err(status) => return format!("{}: {}", status.code(), status.message()),
                    };
                    let Some((through, commit, _)) = unanswered.pop_front() else {
                        return "an answer to no message".into();
                    };
                    let result: Result<AppendEntriesResponse<RaftId>, RaftError<RaftId>> =
                        match decode(&payload.data) {
                            Ok(result) => result,
                            Err(e) => return e.to_string(),
                        };
                    match result {
                        Ok(AppendEntriesResponse::Success) => {
                            self.follower.contacts.saw(&self.follower.node_id);
                            self.progress.send_modify(|p| {
                                if through.index > p.acked.index {
                                    p.acked = through;
                                }
                                p.commit_acked = p.commit_acked.max(commit);
                            });
                        }
                        Ok(other) => return format!("the follower answered {other}"),
                        Err(e) => return format!("the follower failed: {e}"),
                    }
                }
                _ = tokio::time::sleep_until(lingering.unwrap_or_else(Instant::now)), if lingering.is_some() => {}
                _ = tokio::time::sleep_until(overdue.unwrap_or_else(Instant::now)), if overdue.is_some() => {
                    return format!("no answer in {} s", ANSWER_DEADLINE.as_secs());
                }
            }
        }
    }

    /// The next message to send: the entries appended since the last one,
    /// or, when there are none, the commit index openraft wants shared if
    /// the follower has not been told it (after [`COMMIT_LINGER`] at most,
    /// while writes wait for the next entry, which will carry it). None
    /// when there is nothing yet.
    async fn next_message(
        &mut self,
        commit_sent: Option<LogId>,
        lingering: &mut Option<Instant>,
    ) -> Result<Option<AppendEntriesRequest<TypeConfig>>, String> {
        let appended = *self.appended.borrow_and_update();
        let first = self.sent.index + 1;
        if let Some(last) = appended.filter(|&last| last >= first) {
            let last = last.min(first + MESSAGE_ENTRIES - 1);
            let mut entries = self
                .log
                .log_store()
                .try_get_log_entries(first..=last)
                .await
                .map_err(|e| format!("reading the log: {e}"))?;
            entries.truncate(entries_within(&entries, APPEND_OPS));
            if entries.first().map(|e| e.log_id.index) != Some(first) {
                return Err(format!("entry {first} is no longer in the log"));
            }
            if let Some(other) = entries
                .iter()
                .find(|e| e.log_id.leader_id.term != self.vote.leader_id().term)
            {
                return Err(format!("entry {} is of another term", other.log_id));
            }
            *lingering = None;
            return Ok(Some(AppendEntriesRequest {
                vote: self.vote,
                prev_log_id: Some(self.sent),
                leader_commit: self.log.committed().max(*self.commit.borrow()),
                entries,
            }));
        }
        let wanted = *self.commit.borrow_and_update();
        if wanted > commit_sent {
            let now = Instant::now();
            let until = *lingering.get_or_insert(now + COMMIT_LINGER);
            if now < until && self.backlog.next_entry_coming() {
                return Ok(None);
            }
            *lingering = None;
            return Ok(Some(AppendEntriesRequest {
                vote: self.vote,
                prev_log_id: Some(self.sent),
                leader_commit: wanted,
                entries: Vec::new(),
            }));
        }
        Ok(None)
    }
}
