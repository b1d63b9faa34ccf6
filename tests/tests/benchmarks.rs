//! The benchmarks stay runnable: each one, briefly, against the same
//! binaries as the other tests, ends with the figures line it documents.
//! Their figures here mean nothing (debug builds, a busy machine); the
//! release figures are in the README.

use std::process::Command;

use anyhow::{Context, Result, bail};
use shoal_tests::harness::bin_dir;

/// Runs the benchmark binary `exe` with `args` and returns its last line.
fn last_line(exe: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(exe)
        .args(args)
        .env("SHOAL_BIN_DIR", bin_dir())
        .output()
        .with_context(|| format!("running {exe}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{exe} {} failed: {}{stdout}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout.lines().last().unwrap_or_default().to_string())
}

/// The value of `key=` in a figures line, as a number.
fn figure(line: &str, key: &str) -> Result<f64> {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("no {key}= in {line:?}"))?
        .parse()
        .with_context(|| format!("{key} in {line:?}"))
}

#[test]
fn raft_writes_reports_writes_through_either_client() -> Result<()> {
    let exe = env!("CARGO_BIN_EXE_raft-writes");
    let line = last_line(exe, &["--clients", "4", "--seconds", "1"])?;
    assert!(figure(&line, "writes_per_s")? > 0.0, "{line}");
    assert!(figure(&line, "p99_ms")? > 0.0, "{line}");
    assert!(line.contains("client=h2"), "{line}");
    let line = last_line(
        exe,
        &[
            "--clients",
            "4",
            "--seconds",
            "1",
            "--client",
            "tonic",
            "--to",
            "leader",
            "--floor",
        ],
    )?;
    assert!(figure(&line, "writes_per_s")? > 0.0, "{line}");
    assert!(figure(&line, "floor_calls_per_s")? > 0.0, "{line}");
    assert!(line.contains("client=tonic"), "{line}");
    Ok(())
}

#[test]
fn failover_reports_the_time_until_a_write_is_accepted_again() -> Result<()> {
    let line = last_line(env!("CARGO_BIN_EXE_failover"), &["--kills", "1"])?;
    let median = figure(&line, "median_ms")?;
    assert!(median > 0.0 && median <= figure(&line, "max_ms")?, "{line}");
    Ok(())
}

#[test]
fn console_render_reports_frame_times() -> Result<()> {
    let line = last_line(
        env!("CARGO_BIN_EXE_console-render"),
        &["--tasks", "2000", "--frames", "5", "--filter", "web"],
    )?;
    assert!(figure(&line, "p50_ms")? > 0.0, "{line}");
    assert!(figure(&line, "model_mb")? > 0.0, "{line}");
    Ok(())
}

#[test]
fn log_fanin_counts_lines_written_and_received() -> Result<()> {
    let line = last_line(
        env!("CARGO_BIN_EXE_log-fanin"),
        &["--tasks", "2", "--rate", "20", "--seconds", "2"],
    )?;
    // Whether every line arrives is the logs tests' to hold (with their
    // own waits); here the count only has to be made.
    assert!(figure(&line, "received")? > 0.0, "{line}");
    assert!(figure(&line, "lost")? >= 0.0, "{line}");
    Ok(())
}

#[test]
fn swarm2k_reports_convergence_and_memory() -> Result<()> {
    let line = last_line(
        env!("CARGO_BIN_EXE_swarm2k"),
        &["--nodes", "6", "--replicas", "30"],
    )?;
    assert!(figure(&line, "converged_s")? >= 0.0, "{line}");
    assert!(figure(&line, "manager_rss_mb")? > 0.0, "{line}");
    Ok(())
}

#[test]
fn docker_converge_reports_shoal_and_the_engines_floor() -> Result<()> {
    let line = last_line(env!("CARGO_BIN_EXE_docker-converge"), &["--replicas", "2"])?;
    assert!(figure(&line, "shoal_s")? > 0.0, "{line}");
    assert!(figure(&line, "floor_s")? > 0.0, "{line}");
    Ok(())
}
