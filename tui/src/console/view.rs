//! Drawing: a pure function of the model, the UI state and the time, so
//! that a frame can be tested on a `TestBackend`.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};
use shoal_proto::v1 as pb;

use super::app::{
    App, EVENT_LEVELS, FAILURE_ACTIONS, FormField, LOG_WINDOWS, Mode, ORDERS, Pane, PromptKind,
    UpdateForm, View, sort_columns,
};
use super::keymap::Command;
use super::state::{Connection, Level, LogRow, Model, SlotState};
use super::theme::Theme;
use crate::cli::output::{
    availability_name, capitalize, manager_status_name, node_state_name, short, task_state_name,
    update_state_name,
};

pub fn image_of(service: &pb::Service) -> String {
    service
        .spec
        .as_ref()
        .map(super::inspect::image_of)
        .unwrap_or_default()
}

/// "3m", "2h", as compact as an 80-column table needs.
fn age(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return String::new();
    }
    let s = ((now_ms - then_ms).max(0) / 1000) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub fn render(frame: &mut Frame, app: &App, model: &Model, theme: &Theme, now_ms: i64) {
    let area = frame.area();
    if area.width < 40 || area.height < 10 {
        frame.render_widget(
            Paragraph::new("terminal too small for the console: 40x10 at least")
                .wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(2),
    ])
    .areas(area);
    render_header(frame, header, app, model, theme);
    let locked = model
        .info
        .as_ref()
        .is_some_and(|info| info.state == pb::LocalNodeState::Locked as i32);
    if locked && !matches!(app.mode, Mode::Prompt { .. }) {
        render_locked(frame, body, model, theme);
        render_footer(frame, footer, app, model, theme);
        return;
    }
    match app.view {
        View::Nodes => render_nodes(frame, body, app, model, theme),
        View::Services => render_services(frame, body, app, model, theme),
        View::Tasks => render_tasks(frame, body, app, model, theme, now_ms),
        View::Events => render_events(frame, body, app, model, theme, now_ms),
        View::Cluster => render_cluster(frame, body, app, model, theme),
        View::Logs => render_logs(frame, body, app, model, theme),
        View::Problems => render_problems(frame, body, app, model, theme),
    }
    if let Mode::Inspect(pane) | Mode::Help { over: Some(pane) } = &app.mode {
        render_inspect(frame, body, pane, model, theme, now_ms);
    }
    render_footer(frame, footer, app, model, theme);
    if let Mode::UpdateForm(form) = &app.mode {
        render_update_form(frame, area, form, model, theme);
    }
    if let Mode::Help { over } = &app.mode {
        render_help(frame, area, app, theme, over.is_some());
    }
}

/// Lines the inspect pane shows on a terminal `screen_height` tall: the
/// body less its title line (see [`render`]'s layout).
pub fn inspect_rows(screen_height: u16) -> usize {
    (screen_height as usize).saturating_sub(4).max(1)
}

fn render_inspect(
    frame: &mut Frame,
    area: Rect,
    pane: &Pane,
    model: &Model,
    theme: &Theme,
    now_ms: i64,
) {
    let lines = super::inspect::lines(model, &pane.object, pane.json, now_ms);
    let visible = (area.height as usize).saturating_sub(1).max(1);
    let top = pane.scroll.min(lines.len().saturating_sub(visible));
    let shown: Vec<Line> = lines
        .iter()
        .skip(top)
        .take(visible)
        .map(|line| {
            // Section titles ("Status:") stand out from their fields.
            if !pane.json && line.ends_with(':') && !line.starts_with(' ') {
                Line::from(Span::styled(
                    line.clone(),
                    Style::default().add_modifier(Modifier::BOLD),
                ))
            } else {
                Line::from(line.clone())
            }
        })
        .collect();
    let title = format!(
        "Inspect {} {} — {}, lines {}-{} of {} (y: {}, Esc: back)",
        pane.object.kind(),
        pane.object.name(model),
        if pane.json { "JSON" } else { "pretty" },
        (top + 1).min(lines.len()),
        (top + visible).min(lines.len()),
        lines.len(),
        if pane.json { "pretty" } else { "JSON" },
    );
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(shown).block(
            Block::default()
                .borders(Borders::TOP)
                .border_style(theme.border)
                .title(title),
        ),
        area,
    );
}

fn render_header(frame: &mut Frame, area: Rect, app: &App, model: &Model, theme: &Theme) {
    let info = model.info.clone().unwrap_or_default();
    let leader = info
        .manager_list
        .iter()
        .find(|m| m.leader)
        .map(|m| m.hostname.clone())
        .unwrap_or_else(|| "none".into());
    let connection = match &model.connection {
        Connection::Live => String::new(),
        Connection::Connecting => " · connecting…".into(),
        Connection::Lost(_) => " · DISCONNECTED, reconnecting… (showing last known state)".into(),
    };
    let locked = if info.state == pb::LocalNodeState::Locked as i32 {
        " · LOCKED (u to unlock)"
    } else {
        ""
    };
    let text = format!(
        " shoal · {} · {} · leader {} · {}/{} managers · {} nodes{}{}",
        if info.cluster_id.is_empty() {
            "-".into()
        } else {
            short(&info.cluster_id).to_string()
        },
        app.view.name(),
        leader,
        info.reachable_managers,
        info.managers,
        model.nodes.len(),
        locked,
        connection,
    );
    let style = if matches!(model.connection, Connection::Lost(_)) || !locked.is_empty() {
        theme.header.patch(theme.error)
    } else {
        theme.header
    };
    frame.render_widget(Paragraph::new(text).style(style), area);
}

fn table<'a>(
    header: &[&'a str],
    rows: Vec<Row<'a>>,
    widths: &[Constraint],
    title: String,
    theme: &Theme,
) -> Table<'a> {
    Table::new(rows, widths.to_vec())
        .header(Row::new(header.to_vec()).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(
            Block::default()
                .borders(Borders::TOP)
                .border_style(theme.border)
                .title(title),
        )
        .row_highlight_style(theme.selected)
}

fn state_style(theme: &Theme, good: bool, bad: bool) -> Style {
    if bad {
        theme.error
    } else if good {
        theme.ok
    } else {
        theme.warn
    }
}

/// The rows of a table that fit in its area, keeping the selection in
/// view.
struct Page {
    ids: Vec<String>,
    /// The row just above the page: tasks show history relative to it.
    previous: Option<String>,
    /// Rows in all, filtered.
    total: usize,
    state: TableState,
}

/// Only the rows that fit in `area` are built and drawn, so a view of
/// 100,000 tasks costs what a screenful does.
fn page(app: &App, model: &Model, area: Rect) -> Page {
    // Border line and header row.
    let visible = (area.height as usize).saturating_sub(2).max(1);
    let window = |selected: usize| {
        let start = (selected + 1).saturating_sub(visible);
        let (ids, total) = app.row_window(model, start.saturating_sub(1)..start + visible);
        (start, ids, total)
    };
    let mut selected = app.selected();
    let (mut start, mut ids, mut total) = window(selected);
    if total > 0 && selected >= total {
        // The filter left fewer rows than the selection: show the last.
        selected = total - 1;
        (start, ids, total) = window(selected);
    }
    let previous = (start > 0 && !ids.is_empty()).then(|| ids.remove(0));
    let mut state = TableState::default();
    if total > 0 {
        state.select(Some(selected.min(total - 1) - start));
    }
    Page {
        ids,
        previous,
        total,
        state,
    }
}

/// A table's title: its name, then how the rows are sorted (when not by
/// the first column), marked and filtered.
fn filter_title(base: &str, app: &App) -> String {
    let mut title = base.to_string();
    let sort = app.sort_of(app.view);
    if let Some(column) = sort_columns(app.view).get(sort.column)
        && (sort.column != 0 || sort.reverse)
    {
        let arrow = if sort.reverse { "↓" } else { "↑" };
        title.push_str(&format!(" by {column} {arrow}"));
    }
    if !app.marks.is_empty() {
        title.push_str(&format!(" [{} marked]", app.marks.len()));
    }
    if !app.filter.is_empty() {
        title.push_str(&format!(" (filter: {})", app.filter));
    }
    title
}

/// The first cell of a row: marked rows say so.
fn marked(app: &App, id: &str, text: String) -> String {
    if app.marks.contains(id) {
        format!("✓{text}")
    } else {
        text
    }
}

fn render_nodes(frame: &mut Frame, area: Rect, app: &App, model: &Model, theme: &Theme) {
    let Page { ids, mut state, .. } = page(app, model, area);
    let local = model
        .info
        .as_ref()
        .map(|i| i.node_id.clone())
        .unwrap_or_default();
    let rows: Vec<Row> = ids
        .iter()
        .filter_map(|id| model.nodes.get(id))
        .map(|node| {
            let id = node.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
            let state = node.status.as_ref().map_or(0, |s| s.state);
            let availability = node.spec.as_ref().map_or(0, |s| s.availability);
            let manager = manager_status_name(node).unwrap_or("");
            Row::new(vec![
                Cell::from(marked(
                    app,
                    &id,
                    format!("{}{}", short(&id), if id == local { "*" } else { "" }),
                )),
                Cell::from(
                    node.description
                        .as_ref()
                        .map(|d| d.hostname.clone())
                        .unwrap_or_default(),
                ),
                Cell::from(capitalize(node_state_name(state))).style(state_style(
                    theme,
                    state == pb::NodeState::Ready as i32,
                    state == pb::NodeState::Down as i32,
                )),
                Cell::from(capitalize(availability_name(availability))).style(state_style(
                    theme,
                    availability == pb::NodeAvailability::Active as i32,
                    false,
                )),
                Cell::from(capitalize(manager)).style(state_style(
                    theme,
                    manager != "unreachable",
                    manager == "unreachable",
                )),
                Cell::from(model.running_on(&id).to_string()),
                Cell::from(
                    node.description
                        .as_ref()
                        .map(|d| d.agent_version.clone())
                        .unwrap_or_default(),
                ),
                Cell::from(
                    node.spec
                        .as_ref()
                        .map(|s| {
                            let mut labels: Vec<String> =
                                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                            labels.sort();
                            labels.join(",")
                        })
                        .unwrap_or_default(),
                )
                .style(theme.dim),
            ])
        })
        .collect();
    let widget = table(
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "MANAGER",
            "TASKS",
            "VERSION",
            "LABELS",
        ],
        rows,
        &[
            Constraint::Length(13),
            Constraint::Min(8),
            Constraint::Length(7),
            Constraint::Length(12),
            Constraint::Length(11),
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Fill(1),
        ],
        filter_title("Nodes", app),
        theme,
    );
    frame.render_stateful_widget(widget, area, &mut state);
}

fn render_services(frame: &mut Frame, area: Rect, app: &App, model: &Model, theme: &Theme) {
    // The selected service's update, on a line of its own: the table's
    // column has room for the state only.
    let progress = app
        .selected_id(model)
        .and_then(|id| model.services.get(&id))
        .and_then(|s| Some((s, model.update_progress(s)?)));
    let area = match progress {
        Some((service, progress)) => {
            let [table, line, slots] = Layout::vertical([
                Constraint::Min(2),
                Constraint::Length(1),
                Constraint::Length(1),
            ])
            .areas(area);
            render_update_progress(frame, line, service, &progress, theme);
            render_slots(frame, slots, model, service, theme);
            table
        }
        None => area,
    };
    let Page { ids, mut state, .. } = page(app, model, area);
    let rows: Vec<Row> = ids
        .iter()
        .filter_map(|id| model.services.get(id))
        .map(|service| {
            let spec = service.spec.clone().unwrap_or_default();
            let (running, desired) = model.replicas(service);
            let update = service.update_status.as_ref().map(|u| u.state);
            let paused = matches!(
                update.and_then(|u| pb::UpdateState::try_from(u).ok()),
                Some(pb::UpdateState::Paused | pb::UpdateState::RollbackPaused)
            );
            let id = service
                .meta
                .as_ref()
                .map(|m| m.id.as_str())
                .unwrap_or_default();
            Row::new(vec![
                Cell::from(marked(app, id, spec.name.clone())),
                Cell::from(if spec.mode == pb::ServiceMode::Global as i32 {
                    "global"
                } else {
                    "replicated"
                }),
                Cell::from(format!("{running}/{desired}")).style(state_style(
                    theme,
                    running == desired,
                    running == 0 && desired > 0,
                )),
                Cell::from(image_of(service)),
                Cell::from(
                    update
                        .map(|u| update_state_name(u).replace('_', " "))
                        .unwrap_or_default(),
                )
                .style(if paused { theme.error } else { theme.text }),
            ])
        })
        .collect();
    let widget = table(
        &["NAME", "MODE", "REPLICAS", "IMAGE", "UPDATE"],
        rows,
        &[
            Constraint::Min(12),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Min(16),
            Constraint::Length(16),
        ],
        filter_title("Services (Enter: tasks, i: inspect)", app),
        theme,
    );
    frame.render_stateful_widget(widget, area, &mut state);
}

fn render_update_progress(
    frame: &mut Frame,
    area: Rect,
    service: &pb::Service,
    progress: &super::state::UpdateProgress,
    theme: &Theme,
) {
    let name = service
        .spec
        .as_ref()
        .map(|s| s.name.as_str())
        .unwrap_or_default();
    let state = pb::UpdateState::try_from(progress.state).ok();
    let paused = matches!(
        state,
        Some(pb::UpdateState::Paused | pb::UpdateState::RollbackPaused)
    );
    let style = match state {
        _ if paused => theme.error,
        Some(pb::UpdateState::Completed | pb::UpdateState::RollbackCompleted) => theme.ok,
        _ => theme.warn,
    };
    let phase = match state {
        Some(pb::UpdateState::Updating) => "updating",
        Some(pb::UpdateState::Paused) => "update paused",
        Some(pb::UpdateState::Completed) => "update completed",
        Some(pb::UpdateState::RollbackStarted) => "rolling back",
        Some(pb::UpdateState::RollbackPaused) => "rollback paused",
        Some(pb::UpdateState::RollbackCompleted) => "rollback completed",
        _ => "update state unknown",
    };
    let mut text = format!(
        "{name}: {phase}, {}/{} updated",
        progress.updated, progress.total
    );
    if !progress.message.is_empty() {
        text.push_str(&format!(": {}", progress.message));
    }
    frame.render_widget(Paragraph::new(Span::styled(text, style)), area);
}

/// The update slot by slot: one mark per slot, as far as the line goes.
fn render_slots(
    frame: &mut Frame,
    area: Rect,
    model: &Model,
    service: &pb::Service,
    theme: &Theme,
) {
    const LABEL: &str = "slots ";
    let room = (area.width as usize).saturating_sub(LABEL.len() + 12) / 2;
    let states = model.slot_states(service, room + 1);
    let mut spans = vec![Span::styled(LABEL, theme.dim)];
    for state in states.iter().take(room) {
        spans.push(match state {
            SlotState::Updated => Span::styled("■ ", theme.ok),
            SlotState::Starting => Span::styled("▣ ", theme.warn),
            SlotState::Failed => Span::styled("✗ ", theme.error),
            SlotState::Outdated => Span::styled("□ ", theme.dim),
        });
    }
    if states.len() > room {
        spans.push(Span::styled("…", theme.dim));
    }
    spans.push(Span::styled(" ■ new □ old ✗ failed", theme.dim));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn render_tasks(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    model: &Model,
    theme: &Theme,
    now_ms: i64,
) {
    let title = match (&app.focus_service, &app.focus_node) {
        (Some(service_id), _) => format!(
            "Tasks of {}",
            model
                .services
                .get(service_id)
                .and_then(|s| s.spec.as_ref())
                .map(|s| s.name.clone())
                .unwrap_or_else(|| "(removed)".into())
        ),
        (None, Some(node_id)) => format!("Tasks on {}", model.hostname(node_id)),
        (None, None) => {
            frame.render_widget(
                Paragraph::new(
                    "Select a service in the services view (2) and press Enter, or a node in \
                     the nodes view (1) and press t, to see tasks.",
                )
                .wrap(Wrap { trim: true })
                .block(Block::default().borders(Borders::TOP).title("Tasks")),
                area,
            );
            return;
        }
    };
    let Page {
        ids,
        previous,
        mut state,
        ..
    } = page(app, model, area);
    let mut previous_slot = previous
        .and_then(|id| model.task(&id))
        .map(crate::cli::output::slot_key);
    let mut widest = [0usize; 3];
    let rows: Vec<Row> = ids
        .iter()
        .filter_map(|id| model.task(id))
        .map(|task| {
            let status = task.status.clone().unwrap_or_default();
            let slot = crate::cli::output::slot_key(task);
            let base = if task.slot > 0 {
                format!("{}.{}", task.service_name, task.slot)
            } else {
                format!("{}.{}", task.service_name, model.hostname(&task.node_id))
            };
            let label = if previous_slot.as_ref() == Some(&slot) {
                format!(" \\_ {base}")
            } else {
                base
            };
            previous_slot = Some(slot);
            let failed = matches!(
                pb::TaskState::try_from(status.state),
                Ok(pb::TaskState::Failed | pb::TaskState::Rejected)
            );
            let running = status.state == pb::TaskState::Running as i32;
            let image = task
                .spec
                .as_ref()
                .and_then(|s| s.container.as_ref())
                .map(|c| c.image.clone())
                .unwrap_or_default();
            let node = if task.node_id.is_empty() {
                String::new()
            } else {
                model.hostname(&task.node_id)
            };
            widest[0] = widest[0].max(label.chars().count());
            widest[1] = widest[1].max(image.chars().count());
            widest[2] = widest[2].max(node.chars().count());
            Row::new(vec![
                Cell::from(label),
                Cell::from(image),
                Cell::from(node),
                Cell::from(capitalize(task_state_name(task.desired_state))),
                Cell::from(format!(
                    "{} {}{}",
                    capitalize(task_state_name(status.state)),
                    age(now_ms, status.timestamp_ms),
                    crate::cli::output::health_name(status.health)
                        .map_or(String::new(), |h| format!(" ({h})"))
                ))
                .style(state_style(theme, running, failed)),
                Cell::from(status.err.clone()).style(theme.error),
            ])
        })
        .collect();
    // Names, images and hostnames as wide as the page's widest (within
    // bounds), so that at 80 columns a long image is not cut to make room
    // for short names; the error takes what is left.
    let fit = |widest: usize, cap: u16| Constraint::Length(widest.clamp(4, cap.into()) as u16);
    let widget = table(
        &["NAME", "IMAGE", "NODE", "DESIRED", "CURRENT", "ERROR"],
        rows,
        &[
            fit(widest[0], 30),
            fit(widest[1], 32),
            fit(widest[2], 16),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Min(10),
        ],
        filter_title(&title, app),
        theme,
    );
    frame.render_stateful_widget(widget, area, &mut state);
}

fn render_events(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    model: &Model,
    theme: &Theme,
    now_ms: i64,
) {
    let Page { ids, mut state, .. } = page(app, model, area);
    let rows: Vec<Row> = ids
        .iter()
        .filter_map(|i| i.parse::<usize>().ok())
        .filter_map(|i| model.events.get(i))
        .map(|event| {
            let style = match event.level {
                Level::Info => theme.text,
                Level::Warn => theme.warn,
                Level::Error => theme.error,
            };
            Row::new(vec![
                Cell::from(format!("{} ago", age(now_ms, event.time_ms))).style(theme.dim),
                Cell::from(event.text.clone()).style(style),
            ])
        })
        .collect();
    let widget = table(
        &["WHEN", "EVENT"],
        rows,
        &[Constraint::Length(8), Constraint::Min(20)],
        filter_title(
            &match app.events_level {
                0 => "Events (newest first)".to_string(),
                level => format!("Events: {} (newest first)", EVENT_LEVELS[level].0),
            },
            app,
        ),
        theme,
    );
    frame.render_stateful_widget(widget, area, &mut state);
}

/// A locked manager serves nothing until it has its unlock key: the whole
/// body says so and how to give it.
fn render_locked(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let hostname = model
        .info
        .as_ref()
        .map(|info| info.hostname.clone())
        .unwrap_or_default();
    let lines = vec![
        Line::from(Span::styled(format!("{hostname} is locked"), theme.error)),
        Line::from(""),
        Line::from("Autolock is on: this manager's keys are sealed and it serves nothing"),
        Line::from("until it is given the cluster's unlock key (SWMKEY-1-…)."),
        Line::from(""),
        Line::from(vec![
            Span::raw("Press "),
            Span::styled("u", theme.warn),
            Span::raw(" to type the key (it is not shown), then Enter."),
        ]),
        Line::from(""),
        Line::from(Span::styled(
            "Lost the key? Another unlocked manager shows it with 'shoal swarm unlock-key'.",
            theme.dim,
        )),
    ];
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::TOP).title("Locked")),
        area,
    );
}

fn render_cluster(frame: &mut Frame, area: Rect, app: &App, model: &Model, theme: &Theme) {
    let info = model.info.clone().unwrap_or_default();
    let mut lines = vec![
        Line::from(format!("Cluster      {}", info.cluster_id)),
        Line::from(format!(
            "This node    {} ({})",
            info.hostname,
            short(&info.node_id)
        )),
        Line::from(format!(
            "Raft         term {}, commit index {}, applied {}",
            info.raft_term, info.commit_index, info.applied_index
        )),
        Line::from(vec![
            Span::raw(format!(
                "Quorum       {} of {} managers reachable, ",
                info.reachable_managers, info.managers
            )),
            Span::styled(
                format!("{} more can fail", info.fault_tolerance.max(0)),
                if info.fault_tolerance > 0 {
                    theme.ok
                } else {
                    theme.warn
                },
            ),
        ]),
        Line::from(format!(
            "Autolock     {}",
            if info.autolock { "on" } else { "off" }
        )),
        Line::from(""),
        Line::from(Span::styled(
            "Managers",
            Style::default().add_modifier(Modifier::BOLD),
        )),
    ];
    for manager in &info.manager_list {
        let reachable =
            manager.reachability == pb::Reachability::Reachable as i32 || manager.leader;
        lines.push(Line::from(vec![
            Span::raw(format!("  {:<12} {:<22} ", manager.hostname, manager.addr)),
            Span::styled(
                if manager.leader {
                    "leader"
                } else if reachable {
                    "reachable"
                } else {
                    "unreachable"
                },
                state_style(theme, reachable, !reachable),
            ),
        ]));
    }
    lines.push(Line::from(""));
    match &app.tokens {
        Some(tokens) => {
            lines.push(Line::from(Span::styled(
                "To add a worker:",
                Style::default().add_modifier(Modifier::BOLD),
            )));
            lines.push(Line::from(format!("  {}", tokens.worker)));
            lines.push(Line::from(Span::styled(
                "To add a manager:",
                Style::default().add_modifier(Modifier::BOLD),
            )));
            lines.push(Line::from(format!("  {}", tokens.manager)));
        }
        None => lines.push(Line::from(Span::styled(
            format!(
                "{} shows the join commands",
                app.keymap.keys_of(Command::Tokens)
            ),
            theme.dim,
        ))),
    }
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::TOP)
                .border_style(theme.border)
                .title("Cluster health"),
        ),
        area,
    );
}

fn render_logs(frame: &mut Frame, area: Rect, app: &App, model: &Model, theme: &Theme) {
    let Some(service) = &app.logs_service else {
        frame.render_widget(
            Paragraph::new(
                "Select a service in the services view (2) and press l to follow its logs.",
            )
            .block(Block::default().borders(Borders::TOP).title("Logs")),
            area,
        );
        return;
    };
    let name = model
        .services
        .get(service)
        .and_then(|s| s.spec.as_ref())
        .map(|s| s.name.clone())
        .unwrap_or_else(|| "(removed)".into());
    let search = app.filter.to_lowercase();
    let visible = area.height.saturating_sub(1) as usize;
    let width = area.width.max(1) as usize;
    let mut lines: Vec<Line> = Vec::new();
    // Newest last: walk back from the newest shown line until the screen
    // is full, so a long history costs one screenful.
    let mut used = 0;
    let shown: Vec<&LogRow> = shown_logs(app, model).collect();
    for row in shown.iter().rev() {
        let mut spans = Vec::new();
        if app.logs_timestamps {
            let time = std::time::UNIX_EPOCH
                + std::time::Duration::from_nanos(row.timestamp_ns.max(0) as u64);
            spans.push(Span::styled(
                format!("{} ", humantime::format_rfc3339_seconds(time)),
                theme.dim,
            ));
        }
        spans.push(Span::styled(format!("{} | ", row.source), theme.dim));
        let style = if row.stderr { theme.warn } else { theme.text };
        spans.extend(highlighted(&row.text, &search, style, theme.selected));
        let line = Line::from(spans);
        used += if app.logs_wrap {
            line.width().div_ceil(width).max(1)
        } else {
            1
        };
        lines.push(line);
        if used >= visible {
            break;
        }
    }
    lines.reverse();
    let state = match (&model.logs_status, app.logs_paused_at) {
        (Some(status), _) => format!(" — {status}"),
        (None, Some(_)) => format!(
            " — paused ({} follows)",
            app.keymap.keys_of(Command::FollowPause)
        ),
        (None, None) => " — following".to_string(),
    };
    let state = format!("{state}, {}", LOG_WINDOWS[app.logs_window].label);
    let title = if app.filter.is_empty() {
        format!("Logs of {name}{state}")
    } else {
        format!("Logs of {name}{state} (search: {})", app.filter)
    };
    let mut paragraph = Paragraph::new(lines).block(
        Block::default()
            .borders(Borders::TOP)
            .border_style(theme.border)
            .title(title),
    );
    if app.logs_wrap {
        paragraph = paragraph.wrap(Wrap { trim: false });
        // A wrapped first line may not fit whole: keep the newest in view.
        let height = paragraph.line_count(area.width) as u16;
        paragraph = paragraph.scroll((height.saturating_sub(area.height), 0));
    }
    frame.render_widget(paragraph, area);
}

/// The log lines the logs view shows, oldest first: up to the paused
/// line, matching the search.
pub fn shown_logs<'a>(app: &App, model: &'a Model) -> impl Iterator<Item = &'a LogRow> + 'a {
    let newest = app.logs_paused_at.unwrap_or(model.logs_received);
    let first_kept = model.logs_received - model.logs.len() as u64;
    let search = app.filter.to_lowercase();
    model
        .logs
        .iter()
        .enumerate()
        .take_while(move |(i, _)| first_kept + (*i as u64) < newest)
        .filter(move |(_, row)| search.is_empty() || row.text.to_lowercase().contains(&search))
        .map(|(_, row)| row)
}

/// `text` in `style`, with each match of `search` (lowercase) in `mark`.
pub(super) fn highlighted(
    text: &str,
    search: &str,
    style: Style,
    mark: Style,
) -> Vec<Span<'static>> {
    let lower = text.to_lowercase();
    // Lowercasing can change byte lengths (rare outside ASCII): then the
    // match offsets would not fit the text, so the whole line is marked.
    if search.is_empty() || lower.len() != text.len() {
        let whole = if search.is_empty() { style } else { mark };
        return vec![Span::styled(text.to_string(), whole)];
    }
    let mut spans = Vec::new();
    let mut at = 0;
    for (start, found) in lower.match_indices(search) {
        if start < at {
            continue;
        }
        if start > at {
            spans.push(Span::styled(text[at..start].to_string(), style));
        }
        let end = start + found.len();
        spans.push(Span::styled(text[start..end].to_string(), mark));
        at = end;
    }
    if at < text.len() {
        spans.push(Span::styled(text[at..].to_string(), style));
    }
    spans
}

fn render_problems(frame: &mut Frame, area: Rect, app: &App, model: &Model, theme: &Theme) {
    let Page {
        ids,
        total: count,
        mut state,
        ..
    } = page(app, model, area);
    let problems = super::problems::find(model);
    let rows: Vec<Row> = ids
        .iter()
        .filter_map(|key| problems.iter().find(|p| &p.key() == key))
        .map(|problem| {
            let style = match problem.level {
                Level::Error => theme.error,
                Level::Warn => theme.warn,
                Level::Info => theme.text,
            };
            Row::new(vec![Cell::from(problem.text.clone()).style(style)])
        })
        .collect();
    let title = if count == 0 {
        "Problems — none: every node, service and manager is healthy".to_string()
    } else {
        filter_title(
            &format!("Problems ({count}) — Enter jumps to the object"),
            app,
        )
    };
    let widget = table(
        &["WHAT NEEDS ATTENTION"],
        rows,
        &[Constraint::Min(20)],
        title,
        theme,
    );
    frame.render_stateful_widget(widget, area, &mut state);
}

fn render_footer(frame: &mut Frame, area: Rect, app: &App, model: &Model, theme: &Theme) {
    let [status, keys] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
    let line = match &app.mode {
        Mode::Filter => Line::from(format!("/{}", app.filter)),
        Mode::Command(text) => Line::from(format!(":{text}")),
        Mode::Prompt { kind, input } => Line::from(match kind {
            PromptKind::Scale { services } if services.len() > 1 => {
                format!("replicas for {} services: {input}", services.len())
            }
            PromptKind::Scale { services } => format!(
                "scale {} to replicas: {input}",
                services
                    .first()
                    .map_or_else(String::new, |id| model.service_name(id))
            ),
            PromptKind::UnlockKey => format!("unlock key: {}", "*".repeat(input.chars().count())),
        }),
        Mode::Confirm(action) => Line::from(Span::styled(
            format!("{}? (y/N)", capitalize(&action.describe(model))),
            theme.warn,
        )),
        _ => match (&app.status, model.events.front()) {
            (Some((text, error)), _) => Line::from(Span::styled(
                text.clone(),
                if *error { theme.error } else { theme.ok },
            )),
            (None, _) => Line::from(""),
        },
    };
    frame.render_widget(Paragraph::new(line), status);
    let hints = match app.view {
        _ if matches!(app.mode, Mode::UpdateForm(_)) => {
            "Tab/↑↓ field  ←/→ choose  Enter update  Esc cancel".to_string()
        }
        _ if matches!(app.mode, Mode::Inspect(_) | Mode::Help { over: Some(_) }) => {
            inspect_hints(app)
        }
        // Enter and Esc mean something else while a line is being typed
        // or an answer awaited: the views' keys would mislead.
        _ if matches!(app.mode, Mode::Prompt { .. } | Mode::Command(_)) => {
            "Enter apply  Esc cancel".to_string()
        }
        _ if matches!(app.mode, Mode::Filter) => "Enter keep filter  Esc clear".to_string(),
        _ if matches!(app.mode, Mode::Confirm(_)) => "y confirm  any other key cancels".to_string(),
        view => hints(app, view),
    };
    frame.render_widget(Paragraph::new(hints).style(theme.dim), keys);
}

/// A box of `width` x `height` in the middle of `area`, clipped to it.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

fn render_update_form(
    frame: &mut Frame,
    area: Rect,
    form: &UpdateForm,
    model: &Model,
    theme: &Theme,
) {
    let name = model
        .services
        .get(&form.service)
        .and_then(|s| s.spec.as_ref())
        .map_or_else(|| short(&form.service).to_string(), |s| s.name.clone());
    let label_style = |field: FormField| {
        let erring = form.error.as_ref().is_some_and(|(f, _)| *f == field);
        match (form.focus == field, erring) {
            (_, true) => theme.error,
            (true, false) => Style::default().add_modifier(Modifier::BOLD),
            (false, false) => theme.dim,
        }
    };
    let text = |field: FormField, value: &str, hint: &str| {
        let focused = form.focus == field;
        let mut spans = vec![
            Span::styled(format!(" {:<13}", field.label()), label_style(field)),
            Span::styled(
                // The cursor: typing goes to the end of the field.
                format!("{value}{}", if focused { "▏" } else { "" }),
                if focused { theme.selected } else { theme.text },
            ),
        ];
        if !hint.is_empty() {
            spans.push(Span::styled(format!("  {hint}"), theme.dim));
        }
        Line::from(spans)
    };
    let choice = |field: FormField, options: Vec<(&'static str, bool)>| {
        let focused = form.focus == field;
        let mut spans = vec![Span::styled(
            format!(" {:<13}", field.label()),
            label_style(field),
        )];
        for (option, chosen) in options {
            spans.push(if chosen {
                Span::styled(
                    format!("‹{option}›"),
                    if focused { theme.selected } else { theme.ok },
                )
            } else {
                Span::styled(format!(" {option} "), theme.dim)
            });
            spans.push(Span::raw(" "));
        }
        Line::from(spans)
    };
    let mut lines = vec![
        text(FormField::Image, &form.image, ""),
        text(
            FormField::Parallelism,
            &form.parallelism,
            "tasks at once, 0 = all",
        ),
        text(FormField::Delay, &form.delay, "between batches: 5s, 1m30s"),
        choice(
            FormField::FailureAction,
            FAILURE_ACTIONS
                .iter()
                .map(|a| {
                    (
                        super::inspect::failure_action_name(*a as i32),
                        *a == form.failure_action,
                    )
                })
                .collect(),
        ),
        choice(
            FormField::Order,
            ORDERS
                .iter()
                .map(|o| (super::inspect::order_name(*o as i32), *o == form.order))
                .collect(),
        ),
        Line::from(""),
    ];
    lines.push(match &form.error {
        Some((_, message)) => Line::from(Span::styled(format!(" {message}"), theme.error)),
        None => Line::from(Span::styled(
            " Enter starts the update; Esc leaves the service as it is.",
            theme.dim,
        )),
    });
    // The error wraps on a narrow terminal: the box grows to show it.
    let inner = area.width.min(76).saturating_sub(2).max(1) as usize;
    let wrapped = form.error.as_ref().map_or(0, |(_, m)| {
        (m.chars().count() + 1).div_ceil(inner).saturating_sub(1)
    });
    let popup = centered(area, 76, (lines.len() + wrapped) as u16 + 2);
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .border_style(theme.border)
                .title(format!("Rolling update of {name}")),
        ),
        popup,
    );
}

/// The footer's reminder of the view's main keys, from the keymap.
fn hints(app: &App, view: View) -> String {
    let main: &[(Command, &str)] = match view {
        View::Nodes => &[
            (Command::Open, "inspect"),
            (Command::NodeTasks, "tasks"),
            (Command::Activate, "active"),
            (Command::Pause, "pause"),
            (Command::Drain, "drain"),
            (Command::Promote, "promote"),
            (Command::Demote, "demote"),
            (Command::Help, "help"),
        ],
        View::Services => &[
            (Command::Open, "tasks"),
            (Command::Logs, "logs"),
            (Command::Scale, "scale"),
            (Command::Update, "update"),
            (Command::Rollback, "rollback"),
            (Command::Mark, "mark"),
            (Command::Help, "help"),
        ],
        View::Tasks => &[
            (Command::Open, "inspect"),
            (Command::Logs, "logs"),
            (Command::CopyId, "copy id"),
            (Command::Filter, "filter"),
            (Command::Help, "help"),
            (Command::Quit, "quit"),
        ],
        View::Logs => &[
            (Command::FollowPause, "pause/follow"),
            (Command::Since, "since"),
            (Command::Wrap, "wrap"),
            (Command::Timestamps, "time"),
            (Command::Filter, "search"),
            (Command::SaveLogs, "save"),
            (Command::Help, "help"),
        ],
        View::Events => &[
            (Command::Level, "level"),
            (Command::Filter, "filter"),
            (Command::Help, "help"),
            (Command::Quit, "quit"),
        ],
        View::Cluster => &[
            (Command::Tokens, "join tokens"),
            (Command::Unlock, "unlock"),
            (Command::Help, "help"),
            (Command::Quit, "quit"),
        ],
        View::Problems => &[
            (Command::Open, "jump"),
            (Command::Logs, "logs"),
            (Command::Filter, "filter"),
            (Command::Help, "help"),
            (Command::Quit, "quit"),
        ],
    };
    main.iter()
        .filter_map(|(command, label)| Some(format!("{} {label}", first_key(app, *command)?)))
        .collect::<Vec<_>>()
        .join("  ")
}

/// A command's first key: enough of a reminder in the footer, where
/// space is short; the help lists them all.
fn first_key(app: &App, command: Command) -> Option<String> {
    let keys = app.keymap.keys_of(command);
    keys.split(' ')
        .next()
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// The inspect pane's footer, from the keymap like the views' (a pair
/// of commands shares one label: "j/k scroll").
fn inspect_hints(app: &App) -> String {
    let keys = |one: Command, other: Option<Command>| -> Option<String> {
        let first = first_key(app, one)?;
        Some(match other.and_then(|other| first_key(app, other)) {
            Some(second) => format!("{first}/{second}"),
            None => first,
        })
    };
    [
        keys(Command::Down, Some(Command::Up)).map(|k| format!("{k} scroll")),
        keys(Command::First, Some(Command::Last)).map(|k| format!("{k} top/end")),
        keys(Command::PageUp, Some(Command::PageDown)).map(|k| format!("{k} page")),
        Some("y JSON/pretty".to_string()),
        keys(Command::Back, None).map(|k| format!("{k} back")),
        keys(Command::Help, None).map(|k| format!("{k} keys")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("  ")
}

/// The keys of the current view, from the keymap, in two columns when
/// the terminal is narrow, under one line of the keys that switch views.
fn render_help(frame: &mut Frame, area: Rect, app: &App, theme: &Theme, over_inspect: bool) {
    let (view_keys, entries, place) = match over_inspect {
        true => (None, app.keymap.inspect_help(), "the inspect pane"),
        false => (
            app.keymap.view_keys(),
            app.keymap.help(app.view),
            app.view.name(),
        ),
    };
    let first_line = u16::from(view_keys.is_some());
    let columns = if area.height as usize >= entries.len() + first_line as usize + 4 {
        1
    } else {
        2
    };
    let per_column = entries.len().div_ceil(columns);
    let width = area
        .width
        .saturating_sub(2)
        .min(if columns == 1 { 90 } else { 160 });
    let popup = centered(area, width, per_column as u16 + first_line + 2);
    // Each column's keys as wide as its widest.
    let keys_width = |column: usize| {
        entries
            .iter()
            .skip(column * per_column)
            .take(per_column)
            .map(|(keys, _)| keys.chars().count() as u16 + 1)
            .max()
            .unwrap_or(1)
    };
    let rows: Vec<Row> = (0..per_column)
        .map(|i| {
            let mut cells = Vec::new();
            for column in 0..columns {
                match entries.get(column * per_column + i) {
                    Some((keys, what)) => {
                        cells.push(Cell::from(keys.clone()).style(theme.ok));
                        cells.push(Cell::from(what.as_str()));
                    }
                    None => {
                        cells.push(Cell::from(""));
                        cells.push(Cell::from(""));
                    }
                }
            }
            Row::new(cells)
        })
        .collect();
    let mut widths = Vec::new();
    for column in 0..columns {
        widths.push(Constraint::Length(keys_width(column)));
        widths.push(Constraint::Fill(1));
    }
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(theme.border)
        .title(format!(
            "Keys in {place} (any key closes; rebind in console.toml [keys])"
        ));
    let inner = block.inner(popup);
    let [views_area, keys_area] =
        Layout::vertical([Constraint::Length(first_line), Constraint::Fill(1)]).areas(inner);
    frame.render_widget(Clear, popup);
    frame.render_widget(block, popup);
    if let Some((keys, names)) = view_keys {
        let line = Line::from(vec![
            Span::styled(keys, theme.ok),
            Span::raw("  "),
            Span::raw(names),
        ]);
        frame.render_widget(Paragraph::new(line), views_area);
    }
    frame.render_widget(Table::new(rows, widths), keys_area);
}
