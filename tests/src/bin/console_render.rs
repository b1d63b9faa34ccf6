//! How fast the console draws a big cluster: a model with `--tasks` tasks
//! of one service on 1,000 nodes, the tasks view rendered repeatedly on an
//! off-screen 160x48 terminal.
//!
//!     cargo run --release -p shoal-tests --bin console-render -- --tasks 100000
//!
//! Last line: `p50_ms=… p99_ms=… model_mb=…`. `--row N` selects row N
//! (the default is the first), to time paging deep into the list;
//! `--filter TEXT` times a filtered view.

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use shoal_proto::v1 as pb;
use shoal_tui::console::app::{App, View};
use shoal_tui::console::state::Model;
use shoal_tui::console::theme::Theme;
use shoal_tui::console::view;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    #[arg(long, default_value_t = 200)]
    frames: usize,
    /// The selected row: the last rows are the slowest to page to.
    #[arg(long, default_value_t = 0)]
    row: usize,
    /// Filter the tasks as `/` does: every task is read to match it.
    #[arg(long, default_value = "")]
    filter: String,
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() -> Result<()> {
    let args = Args::parse();
    let now = 1_800_000_000_000i64;
    let before = rss_bytes();
    let mut model = Model::default();
    for n in 0..1000 {
        let id = format!("node{n:021}");
        model.nodes.insert(
            id.clone(),
            pb::Node {
                meta: Some(pb::Meta {
                    id,
                    ..Default::default()
                }),
                description: Some(pb::NodeDescription {
                    hostname: format!("node-{n}"),
                    ..Default::default()
                }),
                status: Some(pb::NodeStatus {
                    state: pb::NodeState::Ready as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    }
    let spec = pb::TaskSpec {
        container: Some(pb::ContainerSpec {
            image: "shoal-test/busybox:1".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    model.services.insert(
        "big".into(),
        pb::Service {
            meta: Some(pb::Meta {
                id: "big".into(),
                ..Default::default()
            }),
            spec: Some(pb::ServiceSpec {
                name: "big".into(),
                replicas: args.tasks as u64,
                task: Some(spec.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    for t in 0..args.tasks {
        let id = format!("task{t:021}");
        model.put_task(pb::Task {
            meta: Some(pb::Meta {
                id,
                created_at_ms: now - t as i64,
                ..Default::default()
            }),
            service_id: "big".into(),
            service_name: "big".into(),
            slot: t as u64 + 1,
            node_id: format!("node{:021}", t % 1000),
            spec: Some(spec.clone()),
            desired_state: pb::TaskState::Running as i32,
            status: Some(pb::TaskStatus {
                state: pb::TaskState::Running as i32,
                timestamp_ms: now - 60_000,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let model_mb = rss_bytes().saturating_sub(before) as f64 / (1024.0 * 1024.0);

    let mut app = App {
        focus_service: Some("big".into()),
        view: View::Tasks,
        filter: args.filter.clone(),
        ..Default::default()
    };
    app.selected[View::ALL
        .iter()
        .position(|v| *v == View::Tasks)
        .unwrap_or(0)] = args.row;
    let theme = Theme::mono();
    let mut terminal = Terminal::new(TestBackend::new(160, 48))?;
    let mut times = Vec::with_capacity(args.frames);
    for _ in 0..args.frames {
        let started = Instant::now();
        terminal.draw(|frame| view::render(frame, &app, &model, &theme, now))?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "tasks={} frames={} p50_ms={:.2} p99_ms={:.2} model_mb={model_mb:.0}",
        args.tasks,
        args.frames,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}
