//! Write throughput through the control API on 3 managers: `--clients`
//! concurrent clients, spread over the managers' local sockets (followers
//! forward to the leader), each creating small objects for `--seconds`.
//!
//!     cargo run --release -p shoal-tests --bin raft-writes -- --clients 64 --seconds 10
//!
//! Last line: `writes_per_s=… p50_ms=… p99_ms=…`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use shoal_proto::v1 as pb;
use shoal_tests::{Cluster, Executor};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cluster = Cluster::start(3, 0, Executor::Sim)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let sockets: Vec<_> = cluster.agents.iter().map(|a| a.socket.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let latencies = runtime.block_on(async {
        let mut clients = Vec::new();
        for c in 0..args.clients {
            let socket = sockets[c % sockets.len()].clone();
            let stop = stop.clone();
            clients.push(tokio::spawn(async move {
                let channel = shoal_proto::transport::connect_unix(&socket).await?;
                let mut client = pb::control_client::ControlClient::new(channel);
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let spec = pb::ServiceSpec {
                        name: format!("w{c}-{i}"),
                        replicas: 0,
                        task: Some(pb::TaskSpec {
                            container: Some(pb::ContainerSpec {
                                image: "img".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    let began = Instant::now();
                    client
                        .create_service(pb::CreateServiceRequest { spec: Some(spec) })
                        .await?;
                    latencies.push(began.elapsed());
                }
                anyhow::Ok(latencies)
            }));
        }
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for client in clients {
            all.extend(client.await??);
        }
        anyhow::Ok(all)
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = latencies;
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "writes_per_s={:.0} p50_ms={:.1} p99_ms={:.1} clients={} writes={}",
        latencies.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        args.clients,
        latencies.len()
    );
    Ok(())
}
