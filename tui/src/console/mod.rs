//! The interactive console: `shoal` with no arguments.
//!
//! One event loop owns the state. Background tasks feed it: the `Watch`
//! stream (a full copy, then changes; reconnecting with backoff), a light
//! `Info` poll for raft health, the keyboard, and the results of actions.
//! Drawing is a pure function of that state ([`view::render`]), so the UI
//! never waits on the network.
//!
//! - [`state`] holds the cluster as the console knows it, and the event log.
//! - [`app`] holds views, selection and prompts; keys become actions
//!   ([`app::Action`]).
//! - [`view`] draws the screens.
//! - [`theme`] reads colour themes.
//! - [`inspect`] lays out a node, service or task for the inspect pane.
//! - `ordered` is the sorted set behind the per-service task index.
//! - [`link`] is the connection, and the failover to other managers.
//! - [`settings`] reads the console's settings file; [`alerts`] sends
//!   desktop and terminal notifications.

pub mod alerts;
pub mod app;
pub mod inspect;
pub mod keymap;
pub mod link;
mod ordered;
pub mod problems;
pub mod settings;
pub mod state;
pub mod theme;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use ratatui::crossterm::terminal::{BeginSynchronizedUpdate, EndSynchronizedUpdate};
use shoal_proto::v1 as pb;
use shoal_proto::v1::control_client::ControlClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::cli::Target;
use crate::cli::output::now_ms;
use crate::cli::swarm::join_command;
use crate::fresh::write_fresh;
use app::{Action, App};
use state::{Connection, Level, Model};
use theme::Theme;

type Client = ControlClient<Channel>;

/// What the loop reacts to.
enum Message {
    Watch(Box<pb::WatchMessage>),
    Disconnected(String),
    /// The streams resumed on this manager after a failure.
    Reconnected(String),
    Info(Box<pb::InfoResponse>),
    Key(ratatui::crossterm::event::KeyEvent),
    Resize,
    /// An action finished: its description, or the error to show.
    Done(Result<String, String>),
    /// Lines for the logs view, from the stream of `service`.
    Logs {
        service: String,
        rows: Vec<state::LogRow>,
    },
    LogsEnded {
        service: String,
        reason: String,
    },
    Tokens(app::Tokens),
    Tick,
}

/// What the console is opened with, besides where to connect.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--theme`: a built-in theme or a theme file.
    pub theme: Option<String>,
}

pub async fn run(target: &Target, options: &Options) -> anyhow::Result<()> {
    let settings = settings::Settings::load().map_err(anyhow::Error::msg)?;
    let theme = settings
        .theme(options.theme.as_deref())
        .map_err(anyhow::Error::msg)?;
    let mut alerter = alerts::Alerter::new(settings.alerts.clone());
    let link = link::Link::open(target).await?;
    let (tx, mut rx) = mpsc::channel::<Message>(1024);
    tokio::spawn(watch_loop(link.clone(), tx.clone()));
    tokio::spawn(info_loop(link.clone(), tx.clone()));
    spawn_input(tx.clone());

    let mut terminal = ratatui::init();
    let mut model = Model::default();
    let mut app = App {
        keymap: keymap::Keymap::with(&settings.keys).map_err(|e| {
            anyhow::anyhow!(
                "console settings {}{e}; fix or remove the file",
                settings::path()
                    .map(|p| format!("{}: ", p.display()))
                    .unwrap_or_default()
            )
        })?,
        ..App::default()
    };
    let mut logs_task: Option<tokio::task::AbortHandle> = None;
    let result = async {
        loop {
            // Keys that scroll by the screenful need its size.
            if let Ok(size) = terminal.size() {
                app.screen_height = size.height;
            }
            draw(&mut terminal, &app, &model, &theme)?;
            let Some(first) = rx.recv().await else { break };
            let mut pending = vec![first];
            // Everything already queued is applied before the next frame.
            while let Ok(more) = rx.try_recv() {
                pending.push(more);
            }
            for message in pending {
                handle(
                    message,
                    &mut app,
                    &mut model,
                    &link,
                    &tx,
                    &mut logs_task,
                    &mut alerter,
                );
            }
            if let Some(text) = app.clipboard.take() {
                use std::io::Write;
                let in_tmux = std::env::var_os("TMUX").is_some();
                let mut out = std::io::stdout();
                let _ = out.write_all(alerts::clipboard_sequence(&text, in_tmux).as_bytes());
                let _ = out.flush();
            }
            if app.quit {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    ratatui::restore();
    result
}

fn draw(
    terminal: &mut ratatui::DefaultTerminal,
    app: &App,
    model: &Model,
    theme: &Theme,
) -> anyhow::Result<()> {
    // Synchronized output: slow links show whole frames, not tearing.
    let mut out = std::io::stdout();
    let _ = ratatui::crossterm::execute!(out, BeginSynchronizedUpdate);
    terminal.draw(|frame| view::render(frame, app, model, theme, now_ms()))?;
    let _ = ratatui::crossterm::execute!(out, EndSynchronizedUpdate);
    Ok(())
}

fn handle(
    message: Message,
    app: &mut App,
    model: &mut Model,
    link: &Arc<link::Link>,
    tx: &mpsc::Sender<Message>,
    logs_task: &mut Option<tokio::task::AbortHandle>,
    alerter: &mut alerts::Alerter,
) {
    match message {
        Message::Watch(update) => {
            let before = model.events.len();
            let newest = model.events.front().cloned();
            model.apply(*update);
            let fresh = model.events.front().filter(|e| Some(*e) != newest.as_ref());
            if let Some(event) = fresh
                && event.level == Level::Error
                && model.events.len() >= before
            {
                // The alert: always a banner in the status line; beyond
                // the console, as the settings say.
                app.status = Some((event.text.clone(), true));
                alerter.alert("Shoal", &event.text, std::time::Instant::now());
            }
        }
        Message::Disconnected(reason) => model.connection = Connection::Lost(reason),
        Message::Reconnected(manager) => {
            app.status = Some((format!("connection lost; following {manager}"), false));
        }
        Message::Info(info) => model.info = Some(*info),
        // Mute changes the alerter, which the loop owns.
        Message::Key(key)
            if matches!(app.mode, app::Mode::Normal)
                && app.keymap.command(&key, app.view) == Some(keymap::Command::Mute) =>
        {
            let muted = alerter.toggle_mute();
            let keys = app.keymap.keys_of(keymap::Command::Mute);
            app.status = Some((
                if muted {
                    format!("alerts muted: only this status line shows them ({keys} unmutes)")
                } else {
                    "alerts unmuted".into()
                },
                false,
            ));
        }
        Message::Key(key) => match app.on_key(key, model) {
            Some(Action::FollowLogs { service, window }) => {
                if let Some(previous) = logs_task.take() {
                    previous.abort();
                }
                model.clear_logs();
                let task = tokio::spawn(follow_logs(link.client(), service, window, tx.clone()));
                *logs_task = Some(task.abort_handle());
            }
            Some(Action::SaveLogs) => app.status = Some(save_logs(app, model)),
            Some(Action::FetchTokens) => {
                tokio::spawn(fetch_tokens(link.client(), tx.clone()));
            }
            Some(action) => {
                app.status = Some((format!("{}…", action.describe(model)), false));
                tokio::spawn(perform(link.clone(), action, model.clone(), tx.clone()));
            }
            None => {}
        },
        Message::Logs { service, rows } => {
            if app.logs_service.as_deref() == Some(service.as_str()) {
                model.add_logs(rows);
            }
        }
        Message::LogsEnded { service, reason } => {
            if app.logs_service.as_deref() == Some(service.as_str()) {
                model.logs_status = Some(reason);
            }
        }
        Message::Tokens(tokens) => {
            if app.view == app::View::Cluster {
                app.tokens = Some(tokens);
            }
        }
        Message::Done(Ok(text)) => app.status = Some((text, false)),
        Message::Done(Err(text)) => app.status = Some((text, true)),
        Message::Resize | Message::Tick => {}
    }
}

/// Reads the keyboard on its own thread: crossterm's reads block.
fn spawn_input(tx: mpsc::Sender<Message>) {
    std::thread::spawn(move || {
        loop {
            if tx.is_closed() {
                return;
            }
            match event::poll(Duration::from_millis(500)) {
                Ok(true) => {}
                // Redraw now and then so ages stay current.
                Ok(false) => {
                    if tx.blocking_send(Message::Tick).is_err() {
                        return;
                    }
                    continue;
                }
                Err(_) => return,
            }
            let message = match event::read() {
                Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => Message::Key(key),
                Ok(Event::Resize(..)) => Message::Resize,
                Ok(_) => continue,
                Err(_) => return,
            };
            if tx.blocking_send(message).is_err() {
                return;
            }
        }
    });
}

/// Follows the store: a full copy, then changes. After a failure it
/// finds a manager that answers (the same one, or another) and resumes
/// from the last version seen: versions are raft's, the same everywhere.
async fn watch_loop(link: Arc<link::Link>, tx: mpsc::Sender<Message>) {
    let mut version = 0;
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut client = link.client();
        let request = pb::WatchRequest {
            kinds: Vec::new(),
            since_version: version,
        };
        let reason = match client.watch(request).await {
            Ok(response) => {
                backoff = Duration::from_millis(250);
                let mut stream = response.into_inner();
                loop {
                    match stream.next().await {
                        Some(Ok(message)) => {
                            version = version.max(message.version);
                            if tx.send(Message::Watch(Box::new(message))).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(status)) => break status.message().to_string(),
                        None => break "the manager closed the stream".to_string(),
                    }
                }
            }
            Err(status) => status.message().to_string(),
        };
        if tx.send(Message::Disconnected(reason)).await.is_err() {
            return;
        }
        if let Some(manager) = link.reconnect().await
            && tx.send(Message::Reconnected(manager)).await.is_err()
        {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Raft health (leader, term, quorum) changes without store events.
async fn info_loop(link: Arc<link::Link>, tx: mpsc::Sender<Message>) {
    loop {
        if let Ok(info) = link.client().info(pb::InfoRequest {}).await {
            let info = info.into_inner();
            link.learn(&info).await;
            if tx.send(Message::Info(Box::new(info))).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn perform(link: Arc<link::Link>, action: Action, model: Model, tx: mpsc::Sender<Message>) {
    let description = action.describe(&model);
    let outcome = match action {
        // One after another, so a failure names its row and the rest
        // still happen.
        Action::Many(actions) => {
            let mut failures = Vec::new();
            for one in &actions {
                if let Err(status) = perform_one(&link, one, &model).await {
                    failures.push(format!("{}: {}", one.describe(&model), status.message()));
                }
            }
            if failures.is_empty() {
                Ok(format!("done: {description}"))
            } else {
                Err(format!(
                    "{} of {} failed: {}",
                    failures.len(),
                    actions.len(),
                    failures.join("; ")
                ))
            }
        }
        one => match perform_one(&link, &one, &model).await {
            Ok(()) => Ok(format!("done: {description}")),
            Err(status) => Err(format!("{description} failed: {}", status.message())),
        },
    };
    let _ = tx.send(Message::Done(outcome)).await;
}

async fn perform_one(
    link: &Arc<link::Link>,
    action: &Action,
    model: &Model,
) -> Result<(), tonic::Status> {
    let mut client = link.client();
    match action {
        Action::Scale { service, replicas } => {
            update_service(&mut client, model, service, |spec| {
                spec.replicas = *replicas
            })
            .await
        }
        Action::Update { service, rollout } => {
            update_service(&mut client, model, service, |spec| {
                spec.task
                    .get_or_insert_with(Default::default)
                    .container
                    .get_or_insert_with(Default::default)
                    .image = rollout.image.clone();
                // The form's fields; the monitor period and failure ratio
                // stay as the service has them.
                let update = spec.update.get_or_insert_with(Default::default);
                update.parallelism = rollout.parallelism;
                update.delay_ms = rollout.delay.as_millis() as u64;
                update.failure_action = rollout.failure_action as i32;
                update.order = rollout.order as i32;
            })
            .await
        }
        Action::Rollback { service } => client
            .update_service(pb::UpdateServiceRequest {
                service: service.clone(),
                version: 0,
                spec: None,
                rollback: true,
                pause: false,
            })
            .await
            .map(|_| ()),
        Action::RemoveService { service } => client
            .remove_service(pb::RemoveServiceRequest {
                service: service.clone(),
            })
            .await
            .map(|_| ()),
        Action::Availability { node, availability } => {
            update_node(&mut client, model, node, |spec| {
                spec.availability = *availability as i32
            })
            .await
        }
        Action::Role { node, role } => {
            update_node(&mut client, model, node, |spec| {
                spec.desired_role = *role as i32
            })
            .await
        }
        Action::RemoveNode { node } => client
            .remove_node(pb::RemoveNodeRequest {
                node: node.clone(),
                force: false,
            })
            .await
            .map(|_| ()),
        Action::PauseUpdate { service } => client
            .update_service(pb::UpdateServiceRequest {
                service: service.clone(),
                version: 0,
                spec: None,
                rollback: false,
                pause: true,
            })
            .await
            .map(|_| ()),
        // The same spec again: a paused update goes on with what is
        // still outdated.
        Action::ResumeUpdate { service } => {
            update_service(&mut client, model, service, |_| {}).await
        }
        // Handled by the loop, which owns the log stream and the screen;
        // bulk actions are taken apart by `perform`.
        Action::FollowLogs { .. } | Action::SaveLogs | Action::FetchTokens | Action::Many(_) => {
            Ok(())
        }
        Action::Unlock { key } => match link.opened_on().await {
            Ok(mut node) => node
                .swarm_unlock(pb::SwarmUnlockRequest {
                    unlock_key: key.clone(),
                })
                .await
                .map(|_| ()),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        },
    }
}

/// The join commands for the cluster view.
async fn fetch_tokens(mut client: Client, tx: mpsc::Sender<Message>) {
    let message = match client.get_join_tokens(pb::GetJoinTokensRequest {}).await {
        Ok(response) => {
            let response = response.into_inner();
            let tokens = response.tokens.unwrap_or_default();
            let join = |token: &str| join_command(token, &response.manager_addrs);
            Message::Tokens(app::Tokens {
                worker: join(&tokens.worker),
                manager: join(&tokens.manager),
            })
        }
        Err(status) => Message::Done(Err(format!(
            "cannot show the join tokens: {}",
            status.message()
        ))),
    };
    let _ = tx.send(message).await;
}

/// Writes the lines the logs view shows (search and window applied) to a
/// file in the working directory; the status line names it.
fn save_logs(app: &App, model: &Model) -> (String, bool) {
    let name = app
        .logs_service
        .as_deref()
        .map(|s| model.service_name(s))
        .unwrap_or_default();
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "");
    let file = format!("shoal-logs-{name}-{stamp}.log");
    // Named in full: over SSH the console's working directory is easy to
    // lose track of.
    let path = std::env::current_dir()
        .map(|dir| dir.join(&file))
        .unwrap_or_else(|_| file.into());
    let mut text = String::new();
    let mut count = 0;
    for row in view::shown_logs(app, model) {
        let time = std::time::UNIX_EPOCH + Duration::from_nanos(row.timestamp_ns.max(0) as u64);
        text.push_str(&format!(
            "{} {} {}\n",
            humantime::format_rfc3339_nanos(time),
            row.source,
            row.text.trim_end_matches('\n')
        ));
        count += 1;
    }
    match std::fs::write(&path, text) {
        Ok(()) => (format!("saved {count} lines to {}", path.display()), false),
        Err(e) => (
            format!(
                "cannot save the logs to {}: {e}; start the console in a writable directory",
                path.display()
            ),
            true,
        ),
    }
}

/// Streams a service's logs (the last 200 lines per task, then new ones)
/// into the logs view; the loop aborts it when another service is chosen.
async fn follow_logs(
    mut client: Client,
    service: String,
    window: app::LogWindow,
    tx: mpsc::Sender<Message>,
) {
    let since_ms = if window.since.is_zero() {
        0
    } else {
        now_ms() - window.since.as_millis() as i64
    };
    let request = pb::LogsRequest {
        services: vec![service.clone()],
        tasks: Vec::new(),
        options: Some(pb::LogsOptions {
            follow: true,
            tail: window.tail,
            since_ms,
            stdout: true,
            stderr: true,
        }),
    };
    let reason = match client.logs(request).await {
        Err(status) => format!(
            "logs are not available from this manager: {}",
            status.message()
        ),
        Ok(response) => {
            let mut stream = response.into_inner();
            let mut task_names = std::collections::HashMap::new();
            let mut node_names = std::collections::HashMap::new();
            loop {
                match stream.next().await {
                    Some(Ok(message)) => {
                        task_names.extend(message.task_names);
                        node_names.extend(message.node_names);
                        let mut rows: Vec<state::LogRow> = message
                            .lines
                            .into_iter()
                            .map(|line| {
                                let context = line.context.unwrap_or_default();
                                let task = task_names
                                    .get(&context.task_id)
                                    .and_then(|n: &String| {
                                        n.rsplit_once('.').map(|(base, _)| base.to_string())
                                    })
                                    .unwrap_or_else(|| {
                                        crate::cli::output::short(&context.task_id).to_string()
                                    });
                                let node = node_names
                                    .get(&context.node_id)
                                    .cloned()
                                    .unwrap_or_default();
                                state::LogRow {
                                    timestamp_ns: line.timestamp_ns,
                                    source: format!("{task}@{node}"),
                                    stderr: line.stream == pb::LogStream::Stderr as i32,
                                    text: String::from_utf8_lossy(&line.data).into_owned(),
                                }
                            })
                            .collect();
                        for gap in message.gaps {
                            rows.push(state::LogRow {
                                timestamp_ns: 0,
                                source: "shoal".into(),
                                stderr: true,
                                text: format!(
                                    "… {} lines dropped: the console fell behind",
                                    gap.dropped
                                ),
                            });
                        }
                        if !rows.is_empty()
                            && tx
                                .send(Message::Logs {
                                    service: service.clone(),
                                    rows,
                                })
                                .await
                                .is_err()
                        {
                            return;
                        }
                    }
                    Some(Err(status)) => break format!("log stream ended: {}", status.message()),
                    None => break "log stream ended".to_string(),
                }
            }
        }
    };
    let _ = tx.send(Message::LogsEnded { service, reason }).await;
}

async fn update_service(
    client: &mut Client,
    model: &Model,
    service: &str,
    change: impl Fn(&mut pb::ServiceSpec),
) -> Result<(), tonic::Status> {
    let gone = || tonic::Status::not_found("the service is gone");
    let current = model.services.get(service).cloned().ok_or_else(gone)?;
    write_fresh(
        current,
        |current| {
            let mut client = client.clone();
            let mut spec = current.spec.clone().unwrap_or_default();
            change(&mut spec);
            let request = pb::UpdateServiceRequest {
                service: service.to_string(),
                version: current.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(spec),
                rollback: false,
                pause: false,
            };
            async move { client.update_service(request).await.map(|_| ()) }
        },
        || {
            let mut client = client.clone();
            let names = vec![service.to_string()];
            async move {
                let listed = client
                    .list_services(pb::ListServicesRequest { names })
                    .await?;
                listed
                    .into_inner()
                    .services
                    .into_iter()
                    .next()
                    .ok_or_else(gone)
            }
        },
    )
    .await
}

async fn update_node(
    client: &mut Client,
    model: &Model,
    node: &str,
    change: impl Fn(&mut pb::NodeSpec),
) -> Result<(), tonic::Status> {
    let gone = || tonic::Status::not_found("the node is gone");
    let current = model.nodes.get(node).cloned().ok_or_else(gone)?;
    write_fresh(
        current,
        |current| {
            let mut client = client.clone();
            let mut spec = current.spec.clone().unwrap_or_default();
            change(&mut spec);
            let request = pb::UpdateNodeRequest {
                node: node.to_string(),
                version: current.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(spec),
            };
            async move { client.update_node(request).await.map(|_| ()) }
        },
        || {
            let mut client = client.clone();
            let names = vec![node.to_string()];
            async move {
                let listed = client.list_nodes(pb::ListNodesRequest { names }).await?;
                listed
                    .into_inner()
                    .nodes
                    .into_iter()
                    .next()
                    .ok_or_else(gone)
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests;
