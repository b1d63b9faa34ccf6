//! Write throughput through the control API on 3 managers: `--clients`
//! concurrent clients, spread over the managers' local sockets (followers
//! forward to the leader), each creating small objects for `--seconds`.
//!
//!     cargo run --release -p shoal-tests --bin raft-writes -- --clients 64 --seconds 10
//!
//! `--to leader` sends every call to the leader and `--conns N` has the
//! clients share N connections: together, the setup of etcd's benchmark
//! (leader only, 100 connections for 1,000 clients), which measures raft and
//! the API without the forwarding hop.
//!
//! With `--floor`, the same clients then spend as long reading one of their
//! services by name: calls the control API answers from the local store,
//! without raft. That rate is the most these cores can carry of calls this
//! size, the floor under which writes cannot go, as `docker-converge`
//! measures the engine's.
//!
//! The managers and the clients split the machine's cores (`shoald
//! --threads`, see `shoal_proto::threads_per_agent`): on 2 cores, one
//! runtime thread each.
//!
//! The load generator shares those cores, so it should weigh as little as
//! it can: its clients speak gRPC on h2 directly ([`H2Client`]) and send
//! each call's headers and message in one write. tonic's client
//! (`--client tonic`) sends them in two, because hyper holds a request's
//! body until the connection has granted the new stream flow-control
//! capacity, which it does once the headers are out: a task and a write
//! more for the client per call, and for the manager a second wake-up for
//! the calls whose message it finds not yet there.
//!
//! Last line: `writes_per_s=… p50_ms=… p99_ms=… cpu_us_per_write=…
//! writes_per_entry=… clients=… to=… conns=… client=… writes=…
//! [floor_calls_per_s=…]`.
//! `cpu_us_per_write` is the CPU time the three managers and the benchmark
//! itself used while writing, per write: on a shared VM whose speed varies
//! by the hour it moves less than writes/s does. `writes_per_entry` is how
//! many writes shared a raft entry (group commit).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use shoal_proto::v1 as pb;
use shoal_proto::v1::control_client::ControlClient;
use shoal_tests::{Agent, Cluster, Executor, cpu_time, replica_less_service};
use tonic::Status;
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Also measure the API floor: as many read calls as the clients can
    /// make for as long.
    #[arg(long)]
    floor: bool,
    /// Which managers the clients call: `all` spreads them over the three
    /// (followers forward their writes to the leader), `leader` sends
    /// every call to the leader.
    #[arg(long, value_enum, default_value_t = Target::All)]
    to: Target,
    /// Connections the clients share (HTTP/2 carries many calls at once on
    /// one); 0 gives every client its own.
    #[arg(long, default_value_t = 0)]
    conns: usize,
    /// The gRPC client the clients call with: `h2`, the load generator's
    /// own (one write per call), or `tonic`, the one Shoal's CLI uses.
    #[arg(long, value_enum, default_value_t = ClientKind::H2)]
    client: ClientKind,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientKind {
    H2,
    Tonic,
}

/// A gRPC client on h2 directly, for unary calls: the request's headers
/// and its message are queued together, so they leave in one write.
#[derive(Clone)]
struct H2Client {
    send: h2::client::SendRequest<Bytes>,
}

impl H2Client {
    async fn connect(socket: &Path) -> Result<H2Client> {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let (send, connection) = h2::client::handshake(stream).await?;
        // Ends when the connection does (every clone of `send` dropped, or
        // the manager gone); a call on it then fails with the reason.
        tokio::spawn(connection);
        Ok(H2Client { send })
    }

    /// Calls `method` (a path such as `/shoal.v1.Control/CreateService`)
    /// with `request`; a status other than OK is the error.
    async fn unary<Q, A>(&self, method: &'static str, request: &Q) -> Result<A, Status>
    where
        Q: prost::Message,
        A: prost::Message + Default,
    {
        // A gRPC message: uncompressed flag, big-endian length, message.
        let len = request.encoded_len();
        let mut message = BytesMut::with_capacity(5 + len);
        message.put_u8(0);
        message.put_u32(u32::try_from(len).map_err(|_| Status::internal("message too large"))?);
        request
            .encode(&mut message)
            .map_err(|e| Status::internal(e.to_string()))?;
        let head = http::Request::post(method)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut send = self.send.clone().ready().await.map_err(transport)?;
        let (answer, mut body) = send.send_request(head, false).map_err(transport)?;
        body.send_data(message.freeze(), true).map_err(transport)?;
        let answer = answer.await.map_err(transport)?;
        // An error comes as headers alone ("trailers-only").
        if let Some(status) = Status::from_header_map(answer.headers()) {
            check(status)?;
        }
        let mut body = answer.into_body();
        let mut received = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(transport)?;
            // Returns the window for the next answers on this connection.
            let _ = body.flow_control().release_capacity(chunk.len());
            received.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(transport)?;
        match trailers.as_ref().and_then(Status::from_header_map) {
            Some(status) => check(status)?,
            None => return Err(Status::internal("the answer carried no grpc-status")),
        }
        A::decode(received.get(5..).unwrap_or_default())
            .map_err(|e| Status::internal(format!("decoding the answer: {e}")))
    }
}

fn transport(e: h2::Error) -> Status {
    Status::unavailable(format!("the connection failed: {e}"))
}

fn check(status: Status) -> Result<(), Status> {
    match status.code() {
        tonic::Code::Ok => Ok(()),
        _ => Err(status),
    }
}

/// One connection to a manager's control socket, in the chosen client.
#[derive(Clone)]
enum Connection {
    H2(H2Client),
    Tonic(ControlClient<Channel>),
}

impl Connection {
    async fn open(kind: ClientKind, socket: &Path) -> Result<Connection> {
        Ok(match kind {
            ClientKind::H2 => Connection::H2(H2Client::connect(socket).await?),
            ClientKind::Tonic => Connection::Tonic(ControlClient::new(
                shoal_proto::transport::connect_unix(socket).await?,
            )),
        })
    }

    /// Calls `method` with `request`: the h2 client by its path, tonic's
    /// through `tonic_call`, the generated method for the same path.
    async fn call<Q, A, F, Fut>(
        &self,
        method: &'static str,
        request: Q,
        tonic_call: F,
    ) -> Result<(), Status>
    where
        Q: prost::Message,
        A: prost::Message + Default,
        F: FnOnce(ControlClient<Channel>, Q) -> Fut,
        Fut: Future<Output = Result<tonic::Response<A>, Status>>,
    {
        match self {
            Connection::H2(client) => client.unary::<Q, A>(method, &request).await.map(drop),
            Connection::Tonic(client) => tonic_call(client.clone(), request).await.map(drop),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Target {
    All,
    Leader,
}

/// The connections `clients` clients share: `conns`, or one each for 0.
fn connections(conns: usize, clients: usize) -> usize {
    match conns {
        0 => clients,
        n => n.min(clients),
    }
}

/// Runs `clients` clients on `conns` shared connections of `kind`, each
/// making `call(connection, its index, call number)` until `seconds` pass;
/// answers every call's latency and the time taken.
async fn run_clients<F, Fut>(
    sockets: &[PathBuf],
    kind: ClientKind,
    conns: usize,
    clients: usize,
    seconds: u64,
    call: F,
) -> Result<(Vec<Duration>, Duration)>
where
    F: Fn(Connection, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let mut connections = Vec::with_capacity(conns);
    for n in 0..conns {
        connections.push(Connection::open(kind, &sockets[n % sockets.len()]).await?);
    }
    // The rate is over the time the clients call, not the connecting.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let connection = connections[c % conns].clone();
        let stop = stop.clone();
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let began = Instant::now();
                call(connection.clone(), c, i).await?;
                latencies.push(began.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((all, started.elapsed()))
}

/// How `value` is spelled on the command line.
fn value_name(value: &impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |value| value.get_name().to_string())
}

/// The CPU time `pids` have used so far, together.
fn total_cpu_time(pids: &[u32]) -> Result<Duration> {
    pids.iter()
        .map(|&pid| cpu_time(pid).ok_or_else(|| anyhow::anyhow!("process {pid} has exited")))
        .sum()
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The three managers share this machine's cores, as `shoal demo`'s
    // agents do.
    let threads = shoal_proto::threads_per_agent(3).to_string();
    let cluster = Cluster::start_configured(3, 0, Executor::Sim, &|agent| {
        agent
            .extra_args
            .extend(["--threads".into(), threads.clone()]);
    })?;
    // The clients are a fourth process on those cores, and take a share
    // like the managers'.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(shoal_proto::threads_per_agent(4))
        .enable_all()
        .build()?;
    let leader_name = cluster.leader()?;
    let leader = cluster.agent(&leader_name);
    let sockets: Vec<_> = cluster
        .agents
        .iter()
        .filter(|a| args.to == Target::All || a.name == leader_name)
        .map(|a| a.socket.clone())
        .collect();
    let conns = connections(args.conns, args.clients);
    let pids: Vec<u32> = cluster
        .agents
        .iter()
        .filter_map(Agent::pid)
        .chain([std::process::id()])
        .collect();
    let commit_before = runtime.block_on(leader.info())?.commit_index;
    let cpu_before = total_cpu_time(&pids)?;
    let (mut latencies, elapsed) = runtime.block_on(run_clients(
        &sockets,
        args.client,
        conns,
        args.clients,
        args.seconds,
        |connection, c, i| async move {
            let spec = replica_less_service(format!("w{c}-{i}"));
            connection
                .call(
                    "/shoal.v1.Control/CreateService",
                    pb::CreateServiceRequest { spec: Some(spec) },
                    |mut client, request| async move { client.create_service(request).await },
                )
                .await
        },
    ))?;
    let cpu_used = total_cpu_time(&pids)?.saturating_sub(cpu_before);
    let entries = runtime
        .block_on(leader.info())?
        .commit_index
        .saturating_sub(commit_before);
    let writes = latencies.len();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let mut figures = format!(
        "writes_per_s={:.0} p50_ms={:.1} p99_ms={:.1} cpu_us_per_write={:.0} writes_per_entry={:.1} \
         clients={} to={} conns={} client={} writes={}",
        writes as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        cpu_used.as_secs_f64() * 1e6 / writes.max(1) as f64,
        writes as f64 / entries.max(1) as f64,
        args.clients,
        value_name(&args.to),
        conns,
        value_name(&args.client),
        writes
    );
    if args.floor {
        // Every client made at least its first write, so `w{c}-1` exists.
        let (reads, elapsed) = runtime.block_on(run_clients(
            &sockets,
            args.client,
            conns,
            args.clients,
            args.seconds,
            |connection, c, _| async move {
                connection
                    .call(
                        "/shoal.v1.Control/ListServices",
                        pb::ListServicesRequest {
                            names: vec![format!("w{c}-1")],
                        },
                        |mut client, request| async move { client.list_services(request).await },
                    )
                    .await
            },
        ))?;
        figures.push_str(&format!(
            " floor_calls_per_s={:.0}",
            reads.len() as f64 / elapsed.as_secs_f64()
        ));
    }
    println!("{figures}");
    Ok(())
}
