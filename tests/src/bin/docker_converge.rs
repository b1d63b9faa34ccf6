//! How long a 50-replica service takes to converge on the local Docker
//! engine, beside the engine's own floor (the same number of `docker run
//! -d` at parallelism 8) and, with `--vs-swarm`, Docker Swarm on the same
//! engine (it runs `docker swarm init` and leaves afterwards).
//!
//!     cargo run --release -p shoal-tests --bin docker-converge -- --replicas 50
//!
//! Last line: `shoal_s=… floor_s=… [swarm_s=…]`.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use shoal_tests::{Cluster, Executor, build_test_images, wait_until};

const IMAGE: &str = "shoal-test/busybox:1";

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 50)]
    replicas: usize,
    /// Also time Docker Swarm on this engine.
    #[arg(long)]
    vs_swarm: bool,
}

fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stderr(Stdio::piped())
        .output()?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `docker run -d` of `count` containers from 8 threads.
fn floor(count: usize) -> Result<Duration> {
    let label = format!("shoal-floor={}", std::process::id());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let next = next.clone();
            let label = label.clone();
            std::thread::spawn(move || -> Result<()> {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    docker(&["run", "-d", "--label", &label, IMAGE])?;
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a docker run thread panicked"))??;
    }
    let elapsed = started.elapsed();
    let ids = docker(&["ps", "-aq", "--filter", &format!("label={label}")])?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut rm = vec!["rm", "-f"];
        rm.extend(ids);
        docker(&rm)?;
    }
    Ok(elapsed)
}

fn shoal(count: usize) -> Result<Duration> {
    let cluster = Cluster::start(1, 2, Executor::Docker)?;
    let m1 = cluster.agent("m1");
    let replicas = count.to_string();
    let started = Instant::now();
    m1.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "bench",
        "--replicas",
        &replicas,
        IMAGE,
    ])?;
    wait_until(Duration::from_secs(600), || {
        let services = m1.shoal_json(&["service", "ls"])?;
        Ok(services[0]["replicas_running"].as_u64() == Some(count as u64))
    })?;
    Ok(started.elapsed())
}

fn swarm(count: usize) -> Result<Duration> {
    docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]).context("docker swarm init")?;
    let result = (|| {
        let started = Instant::now();
        docker(&[
            "service",
            "create",
            "--detach",
            "--name",
            "shoal-bench",
            "--replicas",
            &count.to_string(),
            IMAGE,
        ])?;
        loop {
            let replicas = docker(&[
                "service",
                "ls",
                "--filter",
                "name=shoal-bench",
                "--format",
                "{{.Replicas}}",
            ])?;
            if replicas.trim() == format!("{count}/{count}") {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("Docker Swarm did not converge in 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })();
    let _ = docker(&["service", "rm", "shoal-bench"]);
    let _ = docker(&["swarm", "leave", "--force"]);
    result
}

fn main() -> Result<()> {
    let args = Args::parse();
    build_test_images()?;
    let floor = floor(args.replicas)?;
    println!(
        "engine floor: {} x docker run -d at parallelism 8: {:.1} s",
        args.replicas,
        floor.as_secs_f64()
    );
    let shoal = shoal(args.replicas)?;
    println!(
        "shoal: {} replicas running after {:.1} s",
        args.replicas,
        shoal.as_secs_f64()
    );
    let mut last = format!(
        "shoal_s={:.1} floor_s={:.1}",
        shoal.as_secs_f64(),
        floor.as_secs_f64()
    );
    if args.vs_swarm {
        let swarm = swarm(args.replicas)?;
        println!(
            "docker swarm: {} replicas running after {:.1} s",
            args.replicas,
            swarm.as_secs_f64()
        );
        last.push_str(&format!(" swarm_s={:.1}", swarm.as_secs_f64()));
    }
    println!("{last}");
    Ok(())
}
