//! A follower's writes on their way to the leader: the batches a
//! [`super::batcher::ProposalBatcher`] makes travel on one long-lived
//! `ProposeStream` per leader rather than a `Propose` call each.
//!
//! Two writes in three reach the leader this way when clients are spread
//! over the managers, and a call costs both ends a new HTTP/2 stream each
//! time: headers encoded and decoded, routing, trailers, the stream's
//! setup and teardown. On an open stream a batch is one data frame each
//! way. The leader answers the batches in the order they were sent.
//!
//! A leader that does not know the stream (a shoald from before it, during
//! a rolling upgrade) answers `Unimplemented`; from then on every batch to
//! it is a call of its own, as before.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use shoal_proto::v1::raft_client::RaftClient;
use shoal_proto::v1::{ProposeRequest, ProposeResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::ProposeError;
use super::batcher::Outcome;
use super::runtime::WRITE_TIMEOUT;
use crate::raft::network;
use crate::store::Transaction;

/// A stream with nothing on its way is closed after this long, so a leader
/// that has stepped down does not keep one open for each follower forever.
const IDLE: Duration = Duration::from_secs(30);

/// Requests queued for the stream's connection, at most, beyond those the
/// HTTP/2 window takes; the batcher in front keeps only a few in flight.
const QUEUED: usize = 16;

type Answer = Result<Vec<Outcome>, ProposeError>;
type Batch = (ProposeRequest, oneshot::Sender<Answer>);

/// Forwards batches of transactions to the leader at one address.
pub struct Forwarder {
    client: RaftClient<Channel>,
    leader_addr: String,
    /// The open stream's task takes batches here; None, or closed, when
    /// there is none (the next batch opens one).
    stream: Mutex<Option<mpsc::UnboundedSender<Batch>>>,
    /// The leader refused the stream: one call per batch.
    unary: Arc<AtomicBool>,
}

impl Forwarder {
    pub fn new(client: RaftClient<Channel>, leader_addr: String) -> Self {
        Forwarder {
            client,
            leader_addr,
            stream: Mutex::new(None),
            unary: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Commits `txs` on the leader; one outcome per transaction, in order,
    /// or one error for them all.
    pub async fn forward(&self, txs: Vec<Transaction>) -> Answer {
        let transactions = network::encode(&txs).map_err(|e| ProposeError::Raft(e.to_string()))?;
        let request = ProposeRequest { transactions };
        if self.unary.load(Ordering::Relaxed) {
            // Ends the refused stream's task once it has served what it took.
            self.stream.lock().take();
            return call(self.client.clone(), &self.leader_addr, request).await;
        }
        let (reply, answer) = oneshot::channel();
        self.send((request, reply));
        // The stream's task answers an overdue batch itself, after the
        // write timeout; this only covers a task that never answers.
        match tokio::time::timeout(WRITE_TIMEOUT + Duration::from_secs(1), answer).await {
            Err(_) => Err(ProposeError::Timeout),
            Ok(Err(_)) => Err(failed(&self.leader_addr, "the stream to it closed")),
            Ok(Ok(answer)) => answer,
        }
    }

    /// Hands `batch` to the open stream, opening one if there is none.
    fn send(&self, batch: Batch) {
        let mut stream = self.stream.lock();
        let batch = match stream.as_ref() {
            Some(open) => match open.send(batch) {
                Ok(()) => return,
                // The stream ended since the last batch.
                Err(mpsc::error::SendError(batch)) => batch,
            },
            None => batch,
        };
        let (batches, taken) = mpsc::unbounded_channel();
        // A fresh receiver is open: this send cannot fail.
        let _ = batches.send(batch);
        *stream = Some(batches);
        tokio::spawn(
            StreamTask {
                client: self.client.clone(),
                leader_addr: self.leader_addr.clone(),
                unary: self.unary.clone(),
                batches: taken,
            }
            .run(),
        );
    }
}

fn failed(leader_addr: &str, why: &str) -> ProposeError {
    ProposeError::Raft(format!("forwarding to the leader at {leader_addr}: {why}"))
}

/// One batch as a `Propose` call of its own.
async fn call(
    mut client: RaftClient<Channel>,
    leader_addr: &str,
    request: ProposeRequest,
) -> Answer {
    match tokio::time::timeout(WRITE_TIMEOUT, client.propose(request)).await {
        Err(_) => Err(ProposeError::Timeout),
        Ok(Err(status)) => Err(failed(leader_addr, status.message())),
        Ok(Ok(response)) => outcomes(response.into_inner()),
    }
}

fn outcomes(response: ProposeResponse) -> Answer {
    network::decode(&response.outcomes).map_err(|e| ProposeError::Raft(e.to_string()))
}

/// The task behind one stream: sends the batches it is handed and gives
/// each the answer that comes back in its place.
struct StreamTask {
    client: RaftClient<Channel>,
    leader_addr: String,
    unary: Arc<AtomicBool>,
    batches: mpsc::UnboundedReceiver<Batch>,
}

impl StreamTask {
    async fn run(mut self) {
        let Some((first, first_reply)) = self.batches.recv().await else {
            return;
        };
        let (requests, outgoing) = mpsc::channel(QUEUED);
        // Kept until the leader takes the stream, in case it does not know it.
        let first_again = first.clone();
        // Queued before the stream opens, the first batch travels with it.
        let _ = requests.try_send(first);
        let mut waiting = VecDeque::from([(first_reply, Instant::now())]);
        let opened = tokio::time::timeout(
            WRITE_TIMEOUT,
            self.client
                .propose_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing)),
        )
        .await;
        let mut answers = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                self.unary.store(true, Ordering::Relaxed);
                let first_reply = waiting.pop_front().map(|(reply, _)| reply);
                self.serve_unary(first_again, first_reply).await;
                return;
            }
            Ok(Err(status)) => {
                let error = failed(&self.leader_addr, status.message());
                return self.fail(waiting, error);
            }
            Err(_) => return self.fail(waiting, ProposeError::Timeout),
        };
        drop(first_again);
        let mut last_busy = Instant::now();
        loop {
            // A batch unanswered this long ends the stream: the ones behind
            // it on the same connection would wait as long.
            let overdue = waiting.front().map(|(_, sent)| *sent + WRITE_TIMEOUT);
            let idle_until = last_busy + IDLE;
            tokio::select! {
                batch = self.batches.recv() => {
                    let Some((request, reply)) = batch else {
                        let error = failed(&self.leader_addr, "shutting down");
                        return self.fail(waiting, error);
                    };
                    if requests.send(request).await.is_err() {
                        let error = failed(&self.leader_addr, "the stream closed");
                        let _ = reply.send(Err(error.clone()));
                        return self.fail(waiting, error);
                    }
                    waiting.push_back((reply, Instant::now()));
                }
                answer = answers.message() => {
                    let why = match answer {
                        Ok(Some(response)) => match waiting.pop_front() {
                            Some((reply, _)) => {
                                let _ = reply.send(outcomes(response));
                                last_busy = Instant::now();
                                continue;
                            }
                            None => "it answered a batch that was not sent".to_string(),
                        },
                        Ok(None) => "it ended the stream".to_string(),
                        Err(status) => status.message().to_string(),
                    };
                    let error = failed(&self.leader_addr, &why);
                    return self.fail(waiting, error);
                }
                () = tokio::time::sleep_until(overdue.unwrap_or(idle_until)) => {
                    if overdue.is_some() {
                        return self.fail(waiting, ProposeError::Timeout);
                    }
                    // Idle: dropping the request sender ends the stream.
                    return;
                }
            }
        }
    }

    /// Answers every batch still waiting with `error`, and closes the door
    /// to more: the next batch opens a new stream.
    fn fail(mut self, waiting: VecDeque<(oneshot::Sender<Answer>, Instant)>, error: ProposeError) {
        self.batches.close();
        let queued = std::iter::from_fn(|| self.batches.try_recv().ok()).map(|(_, reply)| reply);
        for reply in waiting.into_iter().map(|(reply, _)| reply).chain(queued) {
            let _ = reply.send(Err(error.clone()));
        }
    }

    /// The leader does not know the stream: `first` and whatever else was
    /// handed to this task go as calls of their own.
    async fn serve_unary(
        mut self,
        first: ProposeRequest,
        first_reply: Option<oneshot::Sender<Answer>>,
    ) {
        let mut next = first_reply.map(|reply| (first, reply));
        while let Some((request, reply)) = next {
            let client = self.client.clone();
            let leader_addr = self.leader_addr.clone();
            tokio::spawn(async move {
                let _ = reply.send(call(client, &leader_addr, request).await);
            });
            next = self.batches.recv().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;

    use futures::{Stream, StreamExt};
    use shoal_proto::v1 as pb;
    use shoal_proto::v1::raft_server::{Raft, RaftServer};
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    /// A leader that commits every transaction at the version its time
    /// names, counting how the batches came; `streams_known` false plays a
    /// shoald from before `ProposeStream`.
    #[derive(Default)]
    struct Leader {
        streams_known: bool,
        /// Every stream ends with an error after this many batches.
        stream_breaks_after: Option<usize>,
        streams: AtomicUsize,
        streamed: AtomicUsize,
        calls: AtomicUsize,
    }

    fn commit(transactions: &[u8]) -> Result<pb::ProposeResponse, Status> {
        let txs: Vec<Transaction> =
            network::decode(transactions).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let outcomes: Vec<Outcome> = txs.iter().map(|tx| Ok(tx.time as u64)).collect();
        Ok(pb::ProposeResponse {
            outcomes: network::encode(&outcomes).map_err(|e| Status::internal(e.to_string()))?,
        })
    }

    fn unused<T>() -> Result<T, Status> {
        Err(Status::unimplemented("not part of this test"))
    }

    type Answers = Pin<Box<dyn Stream<Item = Result<pb::ProposeResponse, Status>> + Send>>;
    type Payloads = Pin<Box<dyn Stream<Item = Result<pb::RaftPayload, Status>> + Send>>;

    /// What the test server serves: the leader, shared with the test.
    struct Served(Arc<Leader>);

    #[tonic::async_trait]
    impl Raft for Served {
        async fn propose(
            &self,
            request: Request<pb::ProposeRequest>,
        ) -> Result<Response<pb::ProposeResponse>, Status> {
            self.0.calls.fetch_add(1, Ordering::SeqCst);
            commit(&request.get_ref().transactions).map(Response::new)
        }

        type ProposeStreamStream = Answers;

        async fn propose_stream(
            &self,
            request: Request<Streaming<pb::ProposeRequest>>,
        ) -> Result<Response<Answers>, Status> {
            if !self.0.streams_known {
                return Err(Status::unimplemented("unknown method ProposeStream"));
            }
            self.0.streams.fetch_add(1, Ordering::SeqCst);
            let leader = self.0.clone();
            let answers = request.into_inner().enumerate().map(move |(n, message)| {
                if leader.stream_breaks_after.is_some_and(|limit| n >= limit) {
                    return Err(Status::unavailable("the leader stepped down"));
                }
                leader.streamed.fetch_add(1, Ordering::SeqCst);
                commit(&message?.transactions)
            });
            Ok(Response::new(Box::pin(answers)))
        }

        async fn append_entries(
            &self,
            _: Request<pb::RaftPayload>,
        ) -> Result<Response<pb::RaftPayload>, Status> {
            unused()
        }

        type AppendStreamStream = Payloads;

        async fn append_stream(
            &self,
            _: Request<Streaming<pb::RaftPayload>>,
        ) -> Result<Response<Payloads>, Status> {
            unused()
        }

        async fn vote(
            &self,
            _: Request<pb::RaftPayload>,
        ) -> Result<Response<pb::RaftPayload>, Status> {
            unused()
        }

        async fn install_snapshot(
            &self,
            _: Request<pb::RaftPayload>,
        ) -> Result<Response<pb::RaftPayload>, Status> {
            unused()
        }

        async fn join_raft(
            &self,
            _: Request<pb::JoinRaftRequest>,
        ) -> Result<Response<pb::JoinRaftResponse>, Status> {
            unused()
        }

        async fn leave_raft(
            &self,
            _: Request<pb::LeaveRaftRequest>,
        ) -> Result<Response<pb::LeaveRaftResponse>, Status> {
            unused()
        }
    }

    /// Serves `leader` on a loopback port; answers a forwarder to it.
    async fn forwarder_to(leader: Arc<Leader>) -> Forwarder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(Served(leader)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy();
        Forwarder::new(RaftClient::new(channel), addr)
    }

    /// Batches whose transactions are stamped `first..`, so that each
    /// outcome names the transaction it answers.
    fn batches(count: u64, size: u64) -> Vec<Vec<Transaction>> {
        (0..count)
            .map(|b| {
                (0..size)
                    .map(|t| Transaction::new((b * size + t) as i64))
                    .collect()
            })
            .collect()
    }

    async fn forward_all(forwarder: &Forwarder, batches: Vec<Vec<Transaction>>) -> Vec<Answer> {
        futures::future::join_all(batches.into_iter().map(|txs| forwarder.forward(txs))).await
    }

    fn assert_answered(answers: &[Answer], size: u64) {
        for (b, answer) in answers.iter().enumerate() {
            let expected: Vec<u64> = (0..size).map(|t| b as u64 * size + t).collect();
            match answer {
                Ok(outcomes) => {
                    let versions: Vec<u64> = outcomes
                        .iter()
                        .map(|o| *o.as_ref().expect("committed"))
                        .collect();
                    assert_eq!(versions, expected, "batch {b} got another batch's outcomes");
                }
                Err(e) => panic!("batch {b} failed: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn batches_share_one_stream_and_get_their_own_answers() {
        let leader = Arc::new(Leader {
            streams_known: true,
            ..Leader::default()
        });
        let forwarder = forwarder_to(leader.clone()).await;
        let answers = forward_all(&forwarder, batches(40, 3)).await;
        assert_answered(&answers, 3);
        assert_eq!(leader.streamed.load(Ordering::SeqCst), 40);
        assert_eq!(leader.streams.load(Ordering::SeqCst), 1);
        assert_eq!(leader.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_leader_without_the_stream_gets_one_call_per_batch() {
        let leader = Arc::new(Leader::default());
        let forwarder = forwarder_to(leader.clone()).await;
        let answers = forward_all(&forwarder, batches(5, 2)).await;
        assert_answered(&answers, 2);
        // Once refused, the stream is not asked for again.
        let answers = forward_all(&forwarder, batches(3, 2)).await;
        assert_answered(&answers, 2);
        assert_eq!(leader.calls.load(Ordering::SeqCst), 8);
        assert_eq!(leader.streamed.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_broken_stream_fails_its_batches_and_the_next_batch_opens_another() {
        let leader = Arc::new(Leader {
            streams_known: true,
            stream_breaks_after: Some(1),
            ..Leader::default()
        });
        let forwarder = forwarder_to(leader.clone()).await;
        let first = forwarder.forward(batches(1, 2).remove(0)).await;
        assert_answered(&[first], 2);
        match forwarder.forward(batches(1, 2).remove(0)).await {
            Err(ProposeError::Raft(message)) => assert!(
                message.contains("forwarding to the leader at") && message.contains("stepped down"),
                "{message}"
            ),
            other => panic!("expected the stream's error, got {other:?}"),
        }
        let again = forwarder.forward(batches(1, 2).remove(0)).await;
        assert_answered(&[again], 2);
        assert_eq!(leader.streams.load(Ordering::SeqCst), 2);
    }
}
