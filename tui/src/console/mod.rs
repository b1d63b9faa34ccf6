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
    let mut app = App::default();
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
        // M mutes and unmutes alerts beyond the banner, from any view.
        Message::Key(key)
            if key.code == ratatui::crossterm::event::KeyCode::Char('M')
                && matches!(app.mode, app::Mode::Normal) =>
        {
            let muted = alerter.toggle_mute();
            app.status = Some((
                if muted {
                    "alerts muted: only this status line shows them (M to unmute)".into()
                } else {
                    "alerts unmuted".into()
                },
                false,
            ));
        }
        Message::Key(key) => match app.on_key(key, model) {
            Some(Action::FollowLogs { service }) => {
                if let Some(previous) = logs_task.take() {
                    previous.abort();
                }
                model.clear_logs();
                let task = tokio::spawn(follow_logs(link.client(), service, tx.clone()));
                *logs_task = Some(task.abort_handle());
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
    let mut client = link.client();
    let result = match &action {
        Action::Scale { service, replicas } => {
            update_service(&mut client, &model, service, |spec| {
                spec.replicas = *replicas
            })
            .await
        }
        Action::Update { service, rollout } => {
            update_service(&mut client, &model, service, |spec| {
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
            update_node(&mut client, &model, node, |spec| {
                spec.availability = *availability as i32
            })
            .await
        }
        Action::Role { node, role } => {
            update_node(&mut client, &model, node, |spec| {
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
        // Handled by the loop, which owns the log stream.
        Action::FollowLogs { .. } => Ok(()),
        Action::Unlock { key } => match link.opened_on().await {
            Ok(mut node) => node
                .swarm_unlock(pb::SwarmUnlockRequest {
                    unlock_key: key.clone(),
                })
                .await
                .map(|_| ()),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        },
    };
    let outcome = match result {
        Ok(()) => Ok(format!("done: {description}")),
        Err(status) => Err(format!("{description} failed: {}", status.message())),
    };
    let _ = tx.send(Message::Done(outcome)).await;
}

/// Streams a service's logs (the last 200 lines per task, then new ones)
/// into the logs view; the loop aborts it when another service is chosen.
async fn follow_logs(mut client: Client, service: String, tx: mpsc::Sender<Message>) {
    let request = pb::LogsRequest {
        services: vec![service.clone()],
        tasks: Vec::new(),
        options: Some(pb::LogsOptions {
            follow: true,
            tail: 200,
            since_ms: 0,
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
    change: impl FnOnce(&mut pb::ServiceSpec),
) -> Result<(), tonic::Status> {
    let current = model
        .services
        .get(service)
        .ok_or_else(|| tonic::Status::not_found("the service is gone"))?;
    let mut spec = current.spec.clone().unwrap_or_default();
    change(&mut spec);
    client
        .update_service(pb::UpdateServiceRequest {
            service: service.to_string(),
            version: current.meta.as_ref().map_or(0, |m| m.version),
            spec: Some(spec),
            rollback: false,
        })
        .await
        .map(|_| ())
}

async fn update_node(
    client: &mut Client,
    model: &Model,
    node: &str,
    change: impl FnOnce(&mut pb::NodeSpec),
) -> Result<(), tonic::Status> {
    let current = model
        .nodes
        .get(node)
        .ok_or_else(|| tonic::Status::not_found("the node is gone"))?;
    let mut spec = current.spec.clone().unwrap_or_default();
    change(&mut spec);
    client
        .update_node(pb::UpdateNodeRequest {
            node: node.to_string(),
            version: current.meta.as_ref().map_or(0, |m| m.version),
            spec: Some(spec),
        })
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests;
