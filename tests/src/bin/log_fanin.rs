//! Log fan-in: `--tasks` tasks each print `--rate` numbered, timestamped
//! lines per second for `--seconds`; one `shoal service logs --follow`
//! reader counts what arrives and how late.
//!
//!     cargo run --release -p shoal-tests --bin log-fanin -- --tasks 50 --rate 200 --seconds 30
//!
//! Written lines are counted from the tasks' own output files (the
//! process executor keeps them in each agent's data directory). Last line:
//! `written=… received=… lost=… p99_ms=…`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use shoal_tests::{Cluster, Executor, shoal_path};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 50)]
    tasks: usize,
    #[arg(long, default_value_t = 200)]
    rate: u32,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn count_lines(dir: &std::path::Path) -> usize {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if path.file_name().is_some_and(|n| n == "output.log") {
            total += std::fs::read_to_string(&path)
                .map(|t| t.lines().count())
                .unwrap_or(0);
        }
    }
    total
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cluster = Cluster::start(1, 2, Executor::Process)?;
    let m1 = cluster.agent("m1");
    let program = format!(
        "import time,sys\nn=0\nend=time.time()+{seconds}\nwhile time.time()<end:\n n+=1\n sys.stdout.write('%d %d\\n'%(time.time_ns(),n))\n sys.stdout.flush()\n time.sleep(1/{rate})\ntime.sleep(3600)\n",
        seconds = args.seconds,
        rate = args.rate
    );
    m1.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "fanin",
        "--replicas",
        &args.tasks.to_string(),
        "host",
        "python3",
        "-c",
        &program,
    ])?;
    let mut reader = Command::new(shoal_path())
        .arg("--socket")
        .arg(&m1.socket)
        .args(["service", "logs", "--follow", "--raw", "fanin"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the log reader")?;
    let stdout = reader.stdout.take().context("reader stdout")?;
    let started = Instant::now();
    let deadline = Duration::from_secs(args.seconds + 20);
    let (tx, rx) = std::sync::mpsc::channel::<(i128, String)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((now_ns(), line)).is_err() {
                return;
            }
        }
    });
    let mut delays_ms = Vec::new();
    let mut received = 0usize;
    let mut per_second: HashMap<u64, usize> = HashMap::new();
    let mut last_line = Instant::now();
    while started.elapsed() < deadline {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok((arrived, line)) => {
                last_line = Instant::now();
                received += 1;
                *per_second.entry(started.elapsed().as_secs()).or_default() += 1;
                if let Some(written) = line
                    .split_whitespace()
                    .next()
                    .and_then(|t| t.parse::<i128>().ok())
                {
                    delays_ms.push(((arrived - written) as f64) / 1e6);
                }
            }
            Err(_)
                if started.elapsed() > Duration::from_secs(args.seconds + 3)
                    && last_line.elapsed() > Duration::from_secs(3) =>
            {
                break;
            }
            Err(_) => {}
        }
    }
    let _ = reader.kill();
    let _ = reader.wait();
    let written = count_lines(cluster.root());
    delays_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        delays_ms
            .get(((delays_ms.len() as f64 * p) as usize).min(delays_ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "tasks={} rate={}/s seconds={} peak_lines_per_s={}",
        args.tasks,
        args.rate,
        args.seconds,
        per_second.values().max().copied().unwrap_or(0)
    );
    println!(
        "written={written} received={received} lost={} p50_ms={:.0} p99_ms={:.0}",
        written.saturating_sub(received),
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}
