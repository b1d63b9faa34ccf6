//! What the operator is looking at and doing: the current view, the
//! selection, filters, prompts and confirmations. Keys become [`Action`]s
//! here; the key table also feeds the help screen, so the two never
//! disagree.

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::Duration;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use shoal_proto::v1 as pb;

use super::inspect::Object;
use super::keymap::{Command, Keymap};
use super::state::{Level, Model};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Nodes,
    Services,
    Tasks,
    Logs,
    Events,
    Cluster,
    Problems,
}

impl View {
    pub const ALL: [View; 7] = [
        View::Nodes,
        View::Services,
        View::Tasks,
        View::Logs,
        View::Events,
        View::Cluster,
        View::Problems,
    ];

    pub fn name(self) -> &'static str {
        match self {
            View::Nodes => "nodes",
            View::Services => "services",
            View::Tasks => "tasks",
            View::Logs => "logs",
            View::Events => "events",
            View::Cluster => "cluster",
            View::Problems => "problems",
        }
    }

    fn parse(text: &str) -> Option<View> {
        let text = text.trim().trim_start_matches(':');
        View::ALL
            .into_iter()
            .find(|v| v.name().starts_with(text) && !text.is_empty())
    }
}

/// A change the operator asked for, sent to the manager by the loop.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Stream a service's logs into the logs view (replacing the stream
    /// it shows).
    FollowLogs {
        service: String,
        window: LogWindow,
    },
    /// Write the lines the logs view shows to a file.
    SaveLogs,
    /// Fetch the join commands for the cluster view.
    FetchTokens,
    /// The same change to several rows (the marked ones), one after another.
    Many(Vec<Action>),
    Scale {
        service: String,
        replicas: u64,
    },
    /// A rolling update: a new image, rolled out as the form said.
    Update {
        service: String,
        rollout: Rollout,
    },
    Rollback {
        service: String,
    },
    PauseUpdate {
        service: String,
    },
    /// Sends the service's spec again, which resumes a paused update.
    ResumeUpdate {
        service: String,
    },
    RemoveService {
        service: String,
    },
    Availability {
        node: String,
        availability: pb::NodeAvailability,
    },
    Role {
        node: String,
        role: pb::NodeRole,
    },
    RemoveNode {
        node: String,
    },
    Unlock {
        key: String,
    },
}

impl Action {
    /// One action, or several as one; None for none.
    pub fn many(mut actions: Vec<Action>) -> Option<Action> {
        match actions.len() {
            0 => None,
            1 => actions.pop(),
            _ => Some(Action::Many(actions)),
        }
    }

    /// The name of the node or service the action is about.
    fn target_name(&self, model: &Model) -> String {
        match self {
            Action::Scale { service, .. }
            | Action::Update { service, .. }
            | Action::Rollback { service }
            | Action::PauseUpdate { service }
            | Action::ResumeUpdate { service }
            | Action::RemoveService { service }
            | Action::FollowLogs { service, .. } => model.service_name(service),
            Action::Availability { node, .. }
            | Action::Role { node, .. }
            | Action::RemoveNode { node } => model.hostname(node),
            Action::Unlock { .. } | Action::SaveLogs | Action::FetchTokens | Action::Many(_) => {
                String::new()
            }
        }
    }

    /// What the action does, for confirmations and the status line.
    pub fn describe(&self, model: &Model) -> String {
        let service = |id: &str| model.service_name(id);
        match self {
            Action::Scale {
                service: s,
                replicas,
            } => format!("scale {} to {replicas}", service(s)),
            Action::Update {
                service: s,
                rollout,
            } => format!(
                "update {} to {} ({} at a time, {} apart, {} first, on failure {})",
                service(s),
                rollout.image,
                match rollout.parallelism {
                    0 => "all".to_string(),
                    n => n.to_string(),
                },
                humantime::format_duration(rollout.delay),
                match rollout.order {
                    pb::UpdateOrder::StartFirst => "start",
                    _ => "stop",
                },
                super::inspect::failure_action_name(rollout.failure_action as i32),
            ),
            Action::Rollback { service: s } => format!("roll back {}", service(s)),
            Action::PauseUpdate { service: s } => format!("pause the update of {}", service(s)),
            Action::ResumeUpdate { service: s } => {
                format!("resume the update of {}", service(s))
            }
            Action::SaveLogs => "save the logs shown".to_string(),
            Action::FetchTokens => "fetch the join tokens".to_string(),
            Action::Many(actions) => {
                let Some(first) = actions.first() else {
                    return "nothing".to_string();
                };
                // "set n1 to drain" for each → "set n1, n2, n3 to drain".
                let names: Vec<String> = actions.iter().map(|a| a.target_name(model)).collect();
                first
                    .describe(model)
                    .replacen(&first.target_name(model), &names.join(", "), 1)
            }
            Action::RemoveService { service: s } => format!("remove service {}", service(s)),
            Action::Availability { node, availability } => format!(
                "set {} to {}",
                model.hostname(node),
                crate::cli::output::availability_name(*availability as i32)
            ),
            Action::Role { node, role } => match role {
                pb::NodeRole::Manager => format!("promote {}", model.hostname(node)),
                _ => format!("demote {}", model.hostname(node)),
            },
            Action::RemoveNode { node } => format!("remove node {}", model.hostname(node)),
            Action::Unlock { .. } => "unlock this manager".to_string(),
            Action::FollowLogs { service: s, window } => {
                format!("logs of {}, {}", service(s), window.label)
            }
        }
    }
}

/// How a rolling update goes: the image to roll out, and the update
/// config fields the form sets (the rest of the config is kept).
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub image: String,
    /// Tasks replaced at once; 0 replaces all at once.
    pub parallelism: u64,
    /// Wait between batches.
    pub delay: Duration,
    pub failure_action: pb::FailureAction,
    pub order: pb::UpdateOrder,
}

/// A field of the rolling-update form, in the order Tab visits them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormField {
    Image,
    Parallelism,
    Delay,
    FailureAction,
    Order,
}

impl FormField {
    pub const ALL: [FormField; 5] = [
        FormField::Image,
        FormField::Parallelism,
        FormField::Delay,
        FormField::FailureAction,
        FormField::Order,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FormField::Image => "image",
            FormField::Parallelism => "parallelism",
            FormField::Delay => "delay",
            FormField::FailureAction => "on failure",
            FormField::Order => "order",
        }
    }

    fn step(self, by: isize) -> FormField {
        let at = FormField::ALL.iter().position(|f| *f == self).unwrap_or(0) as isize;
        let len = FormField::ALL.len() as isize;
        FormField::ALL[(at + by).rem_euclid(len) as usize]
    }
}

pub const FAILURE_ACTIONS: [pb::FailureAction; 3] = [
    pb::FailureAction::Pause,
    pb::FailureAction::Continue,
    pb::FailureAction::Rollback,
];

pub const ORDERS: [pb::UpdateOrder; 2] = [pb::UpdateOrder::StopFirst, pb::UpdateOrder::StartFirst];

/// The rolling-update form (`U` on a service). Text fields hold what
/// was typed; they are checked only on submit, so a half-typed value is
/// never an error.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateForm {
    pub service: String,
    pub image: String,
    pub parallelism: String,
    pub delay: String,
    pub failure_action: pb::FailureAction,
    pub order: pb::UpdateOrder,
    pub focus: FormField,
    /// Why the last submit was refused: the field, and how to fix it.
    pub error: Option<(FormField, String)>,
}

impl UpdateForm {
    /// Filled from the service: its image and its update config (Swarm's
    /// defaults where it has none).
    pub fn of(service_id: &str, model: &Model) -> UpdateForm {
        let service = model.services.get(service_id);
        let config = service.and_then(|s| s.spec.as_ref()).and_then(|s| s.update);
        let parallelism = config.as_ref().map_or(1, |c| c.parallelism);
        let delay_ms = config.as_ref().map_or(0, |c| c.delay_ms);
        UpdateForm {
            service: service_id.to_string(),
            image: service.map(super::view::image_of).unwrap_or_default(),
            parallelism: parallelism.to_string(),
            delay: humantime::format_duration(Duration::from_millis(delay_ms)).to_string(),
            failure_action: config
                .as_ref()
                .and_then(|c| pb::FailureAction::try_from(c.failure_action).ok())
                .unwrap_or(pb::FailureAction::Pause),
            order: config
                .as_ref()
                .and_then(|c| pb::UpdateOrder::try_from(c.order).ok())
                .unwrap_or(pb::UpdateOrder::StopFirst),
            focus: FormField::Image,
            error: None,
        }
    }

    /// The text field with the focus, if the focus is on one.
    fn text_mut(&mut self) -> Option<&mut String> {
        match self.focus {
            FormField::Image => Some(&mut self.image),
            FormField::Parallelism => Some(&mut self.parallelism),
            FormField::Delay => Some(&mut self.delay),
            FormField::FailureAction | FormField::Order => None,
        }
    }

    /// Moves a choice field's value one step (wrapping).
    fn choose(&mut self, by: isize) {
        fn cycle<T: Copy + PartialEq>(all: &[T], current: T, by: isize) -> T {
            let at = all.iter().position(|v| *v == current).unwrap_or(0) as isize;
            all[(at + by).rem_euclid(all.len() as isize) as usize]
        }
        match self.focus {
            FormField::FailureAction => {
                self.failure_action = cycle(&FAILURE_ACTIONS, self.failure_action, by)
            }
            FormField::Order => self.order = cycle(&ORDERS, self.order, by),
            _ => {}
        }
    }

    /// The rollout, or the first field that is wrong and how to fix it.
    pub fn validate(&self) -> Result<Rollout, (FormField, String)> {
        let image = self.image.trim();
        if image.is_empty() || image.contains(char::is_whitespace) {
            return Err((
                FormField::Image,
                "image: enter an image reference without spaces, such as nginx:1.27".into(),
            ));
        }
        let parallelism = self.parallelism.trim().parse::<u64>().map_err(|_| {
            (
                FormField::Parallelism,
                format!(
                    "parallelism: {:?} is not a whole number: use 1 or more (0 = all at once)",
                    self.parallelism.trim()
                ),
            )
        })?;
        let delay = crate::cli::output::parse_duration(self.delay.trim()).map_err(|_| {
            (
                FormField::Delay,
                format!(
                    "delay: {:?} is not a duration: use forms like 5s, 1m30s or 500ms",
                    self.delay.trim()
                ),
            )
        })?;
        Ok(Rollout {
            image: image.to_string(),
            parallelism,
            delay,
            failure_action: self.failure_action,
            order: self.order,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum PromptKind {
    /// Scale these services (the marked ones, or the selected) to one count.
    Scale {
        services: Vec<String>,
    },
    UnlockKey,
}

/// The inspect pane: what it shows, how, and how far it is scrolled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pane {
    pub object: Object,
    /// The JSON the CLI prints, instead of the pretty layout.
    pub json: bool,
    /// The first line shown.
    pub scroll: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Normal,
    Inspect(Pane),
    UpdateForm(UpdateForm),
    Filter,
    Command(String),
    Prompt {
        kind: PromptKind,
        input: String,
    },
    Confirm(Action),
    /// The keys, over the view or over the inspect pane it returns to.
    Help {
        over: Option<Pane>,
    },
}

/// How far back the logs view reaches: the stream is restarted with
/// these options when the operator picks another window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogWindow {
    pub label: &'static str,
    /// Lines per task from the end; negative for all.
    pub tail: i64,
    /// How far back from now; zero for no bound.
    pub since: Duration,
}

pub const LOG_WINDOWS: [LogWindow; 6] = [
    LogWindow {
        label: "last 200 lines per task",
        tail: 200,
        since: Duration::ZERO,
    },
    LogWindow {
        label: "since 1m",
        tail: -1,
        since: Duration::from_secs(60),
    },
    LogWindow {
        label: "since 5m",
        tail: -1,
        since: Duration::from_secs(300),
    },
    LogWindow {
        label: "since 15m",
        tail: -1,
        since: Duration::from_secs(900),
    },
    LogWindow {
        label: "since 1h",
        tail: -1,
        since: Duration::from_secs(3600),
    },
    LogWindow {
        label: "everything kept",
        tail: -1,
        since: Duration::ZERO,
    },
];

/// A view's sort: which of its columns, which way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sort {
    pub column: usize,
    pub reverse: bool,
}

/// The columns rows can be sorted by, per view; the first is the default.
pub fn sort_columns(view: View) -> &'static [&'static str] {
    match view {
        View::Nodes => &["hostname", "status", "availability", "manager", "tasks"],
        View::Services => &["name", "replicas", "image", "mode", "update"],
        _ => &[],
    }
}

/// Which events the events view shows.
pub const EVENT_LEVELS: [(&str, Level); 3] = [
    ("all", Level::Info),
    ("warnings and errors", Level::Warn),
    ("errors", Level::Error),
];

pub struct App {
    pub view: View,
    /// Selected row per view.
    pub selected: [usize; 7],
    /// Sort per view.
    pub sort: [Sort; 7],
    pub filter: String,
    /// Rows marked for a bulk action, in the current view.
    pub marks: BTreeSet<String>,
    pub mode: Mode,
    pub keymap: Keymap,
    /// The service whose tasks the tasks view shows.
    pub focus_service: Option<String>,
    /// The node whose tasks the tasks view shows, when no service is
    /// focused.
    pub focus_node: Option<String>,
    /// The service whose logs the logs view shows.
    pub logs_service: Option<String>,
    /// Logs view: frozen at this line count (paused), or following.
    pub logs_paused_at: Option<u64>,
    pub logs_timestamps: bool,
    pub logs_wrap: bool,
    /// Index into [`LOG_WINDOWS`].
    pub logs_window: usize,
    /// Index into [`EVENT_LEVELS`].
    pub events_level: usize,
    /// The join commands, while the cluster view shows them.
    pub tokens: Option<Tokens>,
    /// Text to put on the operator's clipboard (OSC 52) at the next frame.
    pub clipboard: Option<String>,
    /// The last action's outcome: (text, is error).
    pub status: Option<(String, bool)>,
    pub quit: bool,
    /// The terminal's height at the last frame: the inspect pane scrolls
    /// no further than its last screenful, which depends on it.
    pub screen_height: u16,
}

/// The join commands, as `swarm join-token` prints them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    pub worker: String,
    pub manager: String,
}

impl Default for App {
    fn default() -> Self {
        App {
            view: View::Services,
            selected: [0; 7],
            sort: [Sort::default(); 7],
            filter: String::new(),
            marks: BTreeSet::new(),
            mode: Mode::Normal,
            keymap: Keymap::default(),
            focus_service: None,
            focus_node: None,
            logs_service: None,
            logs_paused_at: None,
            logs_timestamps: false,
            logs_wrap: false,
            logs_window: 0,
            events_level: 0,
            tokens: None,
            clipboard: None,
            status: None,
            quit: false,
            screen_height: 24,
        }
    }
}

fn index(view: View) -> usize {
    View::ALL.iter().position(|v| *v == view).unwrap_or(0)
}

impl App {
    pub fn selected(&self) -> usize {
        self.selected[index(self.view)]
    }

    fn set_selected(&mut self, row: usize) {
        self.selected[index(self.view)] = row;
    }

    fn switch(&mut self, view: View) {
        self.view = view;
        self.filter.clear();
        self.marks.clear();
    }

    pub fn sort_of(&self, view: View) -> Sort {
        self.sort[index(view)]
    }

    /// How many rows the current view shows, filtered.
    pub fn row_count(&self, model: &Model) -> usize {
        match (self.view, &self.focus_service) {
            (View::Tasks, Some(service)) if self.filter.is_empty() => model.task_count(service),
            (View::Tasks, Some(service)) => self.task_rows(model, service).count(),
            _ => self.rows(model).len(),
        }
    }

    /// Ids of the rows in `range` of the current view (filtered, in
    /// display order), and how many rows there are in all: one pass, and
    /// for tasks only the rows in `range` are built.
    pub fn row_window(&self, model: &Model, range: Range<usize>) -> (Vec<String>, usize) {
        match (self.view, &self.focus_service) {
            (View::Tasks, Some(service)) if self.filter.is_empty() => (
                model
                    .task_ids_of(service, range.start)
                    .take(range.len())
                    .map(|(id, _)| id.to_string())
                    .collect(),
                model.task_count(service),
            ),
            (View::Tasks, Some(service)) => {
                let mut ids = Vec::new();
                let mut total = 0;
                for id in self.task_rows(model, service) {
                    if range.contains(&total) {
                        ids.push(id.to_string());
                    }
                    total += 1;
                }
                (ids, total)
            }
            _ => {
                let rows = self.rows(model);
                let end = range.end.min(rows.len());
                let ids = rows
                    .get(range.start.min(end)..end)
                    .map(<[String]>::to_vec)
                    .unwrap_or_default();
                (ids, rows.len())
            }
        }
    }

    /// Ids of the focused service's tasks that pass the filter, lazily.
    fn task_rows<'a>(&self, model: &'a Model, service: &str) -> impl Iterator<Item = &'a str> + 'a {
        let filter = self.filter.to_lowercase();
        // A task matches on "service hostname", which its node decides (a
        // service's tasks share its name): a service's many tasks share
        // few nodes, so each node is matched once, not once per task.
        let mut matches: Vec<Option<bool>> = Vec::new();
        model
            .task_ids_of(service, 0)
            .filter(move |(id, node)| {
                if filter.is_empty() {
                    return true;
                }
                if matches.len() <= node.index() {
                    matches.resize(node.index() + 1, None);
                }
                *matches[node.index()].get_or_insert_with(|| {
                    let name = model.task(id).map_or("", |t| t.service_name.as_str());
                    let node_id = model.node_id_of(*node);
                    format!("{name} {}", model.hostname(node_id))
                        .to_lowercase()
                        .contains(&filter)
                })
            })
            .map(|(id, _)| id)
    }

    /// Every row id of the current view, filtered, in display order.
    pub fn rows(&self, model: &Model) -> Vec<String> {
        let filter = self.filter.to_lowercase();
        // Formatting every row only to match an empty filter would cost
        // more than drawing: skip it.
        let keep = |text: String| text.to_lowercase().contains(&filter);
        match self.view {
            View::Nodes => {
                let mut nodes: Vec<(&String, &pb::Node)> = model
                    .nodes
                    .iter()
                    .filter(|(id, n)| {
                        filter.is_empty()
                            || keep(format!(
                                "{id} {}",
                                n.description
                                    .as_ref()
                                    .map(|d| d.hostname.as_str())
                                    .unwrap_or("")
                            ))
                    })
                    .collect();
                let sort = self.sort_of(View::Nodes);
                let hostname = |n: &pb::Node| {
                    n.description
                        .as_ref()
                        .map(|d| d.hostname.clone())
                        .unwrap_or_default()
                };
                // Hostname breaks ties, so equal keys keep a stable order.
                nodes.sort_by_cached_key(|(id, n)| {
                    let key = match sort.column {
                        1 => n.status.as_ref().map_or(0, |s| s.state).to_string(),
                        2 => n.spec.as_ref().map_or(0, |s| s.availability).to_string(),
                        3 => crate::cli::output::manager_status_name(n)
                            .unwrap_or("~")
                            .to_string(),
                        4 => format!("{:012}", model.running_on(id)),
                        _ => String::new(),
                    };
                    (key, hostname(n))
                });
                if sort.reverse {
                    nodes.reverse();
                }
                nodes.into_iter().map(|(id, _)| id.clone()).collect()
            }
            View::Services => {
                let mut services: Vec<(&String, &pb::Service)> = model
                    .services
                    .iter()
                    .filter(|(_, s)| {
                        filter.is_empty()
                            || keep(format!(
                                "{} {}",
                                s.spec.as_ref().map_or("", |s| s.name.as_str()),
                                super::view::image_of(s)
                            ))
                    })
                    .collect();
                let sort = self.sort_of(View::Services);
                services.sort_by_cached_key(|(_, s)| {
                    let name = s.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                    let key = match sort.column {
                        // Least converged first: what needs a look.
                        1 => {
                            let (running, desired) = model.replicas(s);
                            format!(
                                "{:012}",
                                (running * 1000).checked_div(desired).unwrap_or(1000)
                            )
                        }
                        2 => super::view::image_of(s),
                        3 => s.spec.as_ref().map_or(0, |s| s.mode).to_string(),
                        4 => s
                            .update_status
                            .as_ref()
                            .map(|u| u.state.to_string())
                            .unwrap_or_default(),
                        _ => String::new(),
                    };
                    (key, name)
                });
                if sort.reverse {
                    services.reverse();
                }
                services.into_iter().map(|(id, _)| id.clone()).collect()
            }
            View::Tasks => match (&self.focus_service, &self.focus_node) {
                (Some(service), _) => self.task_rows(model, service).map(str::to_string).collect(),
                (None, Some(node)) => {
                    let hostname = model.hostname(node);
                    model
                        .task_ids_on(node)
                        .into_iter()
                        .filter(|id| {
                            filter.is_empty()
                                || keep(format!(
                                    "{} {hostname}",
                                    model.task(id).map_or("", |t| t.service_name.as_str())
                                ))
                        })
                        .collect()
                }
                (None, None) => Vec::new(),
            },
            View::Events => (0..model.events.len())
                .filter(|i| model.events[*i].level >= EVENT_LEVELS[self.events_level].1)
                .filter(|i| filter.is_empty() || keep(model.events[*i].text.clone()))
                .map(|i| i.to_string())
                .collect(),
            View::Problems => super::problems::find(model)
                .into_iter()
                .filter(|p| filter.is_empty() || keep(p.text.clone()))
                .map(|p| p.key())
                .collect(),
            View::Cluster | View::Logs => Vec::new(),
        }
    }

    /// The selected row's id, if the view has rows.
    pub fn selected_id(&self, model: &Model) -> Option<String> {
        let count = self.row_count(model);
        let selected = self.selected().min(count.checked_sub(1)?);
        self.row_window(model, selected..selected + 1).0.pop()
    }

    /// Handles a key; returns an action to send when one is ready.
    pub fn on_key(&mut self, key: KeyEvent, model: &Model) -> Option<Action> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return None;
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.normal_key(key, model),
            Mode::Inspect(pane) => {
                self.inspect_key(key, pane, model);
                None
            }
            Mode::UpdateForm(form) => self.form_key(key, form),
            Mode::Help { over } => {
                if let Some(pane) = over {
                    self.mode = Mode::Inspect(pane);
                }
                None
            }
            Mode::Filter => {
                match key.code {
                    KeyCode::Esc => self.filter.clear(),
                    KeyCode::Enter => {}
                    KeyCode::Backspace => {
                        self.filter.pop();
                        self.mode = Mode::Filter;
                    }
                    KeyCode::Char(c) => {
                        self.filter.push(c);
                        self.set_selected(0);
                        self.mode = Mode::Filter;
                    }
                    _ => self.mode = Mode::Filter,
                }
                None
            }
            Mode::Command(mut text) => {
                match key.code {
                    KeyCode::Esc => {}
                    KeyCode::Enter => match View::parse(&text) {
                        Some(view) => self.switch(view),
                        None => {
                            self.status = Some((
                                format!(
                                    "no view named {text:?}: try :nodes, :services, :tasks, :events, :cluster"
                                ),
                                true,
                            ))
                        }
                    },
                    KeyCode::Backspace => {
                        text.pop();
                        self.mode = Mode::Command(text);
                    }
                    KeyCode::Char(c) => {
                        text.push(c);
                        self.mode = Mode::Command(text);
                    }
                    _ => self.mode = Mode::Command(text),
                }
                None
            }
            Mode::Prompt { kind, mut input } => match key.code {
                KeyCode::Esc => None,
                KeyCode::Enter => self.submit_prompt(kind, input.trim().to_string()),
                KeyCode::Backspace => {
                    input.pop();
                    self.mode = Mode::Prompt { kind, input };
                    None
                }
                KeyCode::Char(c) => {
                    input.push(c);
                    self.mode = Mode::Prompt { kind, input };
                    None
                }
                _ => {
                    self.mode = Mode::Prompt { kind, input };
                    None
                }
            },
            Mode::Confirm(action) => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.marks.clear();
                    Some(action)
                }
                _ => {
                    self.status = Some(("cancelled".into(), false));
                    None
                }
            },
        }
    }

    fn submit_prompt(&mut self, kind: PromptKind, input: String) -> Option<Action> {
        match kind {
            PromptKind::Scale { services } => match input.parse::<u64>() {
                Ok(replicas) => {
                    self.marks.clear();
                    Action::many(
                        services
                            .into_iter()
                            .map(|service| Action::Scale { service, replicas })
                            .collect(),
                    )
                }
                Err(_) => {
                    self.status = Some((
                        format!("{input:?} is not a number of replicas: type a whole number"),
                        true,
                    ));
                    None
                }
            },
            PromptKind::UnlockKey if !input.is_empty() => Some(Action::Unlock { key: input }),
            _ => None,
        }
    }

    /// Rows a page key moves by: the screen less the header, the table's
    /// title and column row, and the footer.
    fn page_rows(&self) -> usize {
        usize::from(self.screen_height.saturating_sub(6)).max(1)
    }

    /// The rows an action applies to: the marked ones in display order
    /// (then any a filter now hides), or the selected one.
    fn targets(&self, model: &Model) -> Vec<String> {
        if self.marks.is_empty() {
            return self.selected_id(model).into_iter().collect();
        }
        let mut targets: Vec<String> = self
            .rows(model)
            .into_iter()
            .filter(|id| self.marks.contains(id))
            .collect();
        for id in &self.marks {
            if !targets.contains(id) {
                targets.push(id.clone());
            }
        }
        targets
    }

    fn normal_key(&mut self, key: KeyEvent, model: &Model) -> Option<Action> {
        let command = self.keymap.command(&key, self.view)?;
        let rows = self.row_count(model);
        let last = rows.saturating_sub(1);
        let page = self.page_rows();
        if self.view == View::Logs
            && let Some(action) = self.logs_command(command, model)
        {
            return action;
        }
        match command {
            Command::Quit => self.quit = true,
            Command::Help => self.mode = Mode::Help { over: None },
            Command::Filter => self.mode = Mode::Filter,
            Command::CommandLine => self.mode = Mode::Command(String::new()),
            Command::Back => {
                self.filter.clear();
                self.marks.clear();
            }
            Command::Show(view) => self.switch(view),
            Command::NextView => {
                let next = (index(self.view) + 1) % View::ALL.len();
                self.switch(View::ALL[next]);
            }
            Command::PreviousView => {
                let next = (index(self.view) + View::ALL.len() - 1) % View::ALL.len();
                self.switch(View::ALL[next]);
            }
            Command::Down => self.set_selected((self.selected() + 1).min(last)),
            Command::Up => self.set_selected(self.selected().saturating_sub(1)),
            Command::PageDown => self.set_selected((self.selected() + page).min(last)),
            Command::PageUp => self.set_selected(self.selected().saturating_sub(page)),
            Command::First => self.set_selected(0),
            Command::Last => self.set_selected(last),
            Command::Unlock => {
                self.mode = Mode::Prompt {
                    kind: PromptKind::UnlockKey,
                    input: String::new(),
                }
            }
            Command::Mark => {
                let id = self.selected_id(model)?;
                if !self.marks.remove(&id) {
                    self.marks.insert(id);
                }
                self.set_selected((self.selected() + 1).min(last));
            }
            Command::MarkAll => {
                if self.marks.is_empty() {
                    self.marks = self.rows(model).into_iter().collect();
                } else {
                    self.marks.clear();
                }
            }
            Command::Sort | Command::SortReverse => {
                let columns = sort_columns(self.view);
                let sort = &mut self.sort[index(self.view)];
                if command == Command::Sort {
                    sort.column = (sort.column + 1) % columns.len().max(1);
                } else {
                    sort.reverse = !sort.reverse;
                }
                let column = columns.get(sort.column).copied().unwrap_or("");
                let way = if sort.reverse {
                    "descending"
                } else {
                    "ascending"
                };
                self.status = Some((format!("sorted by {column}, {way}"), false));
            }
            Command::CopyId => {
                let id = self.selected_id(model)?;
                self.status = Some((format!("copied {id} to the clipboard (OSC 52)"), false));
                self.clipboard = Some(id);
            }
            Command::Level => {
                self.events_level = (self.events_level + 1) % EVENT_LEVELS.len();
                self.set_selected(0);
            }
            Command::Tokens => {
                if self.tokens.take().is_none() {
                    return Some(Action::FetchTokens);
                }
            }
            _ => return self.object_command(command, model),
        }
        None
    }

    /// The logs view's own meanings of keys. None when the command means
    /// what it means everywhere; Some(action) when it was handled here.
    fn logs_command(&mut self, command: Command, model: &Model) -> Option<Option<Action>> {
        let oldest = model.logs_received - model.logs.len() as u64;
        match command {
            Command::FollowPause => {
                self.logs_paused_at = match self.logs_paused_at {
                    Some(_) => None,
                    None => Some(model.logs_received),
                }
            }
            Command::Timestamps => self.logs_timestamps = !self.logs_timestamps,
            Command::Wrap => self.logs_wrap = !self.logs_wrap,
            Command::Last => self.logs_paused_at = None,
            Command::Up | Command::PageUp => {
                let by = if command == Command::Up {
                    1
                } else {
                    self.page_rows() as u64
                };
                let at = self.logs_paused_at.unwrap_or(model.logs_received);
                self.logs_paused_at = Some(at.saturating_sub(by).max(oldest + 1).max(1));
            }
            Command::Down | Command::PageDown => {
                let by = if command == Command::Down {
                    1
                } else {
                    self.page_rows() as u64
                };
                if let Some(at) = self.logs_paused_at {
                    self.logs_paused_at = (at + by < model.logs_received).then_some(at + by);
                }
            }
            Command::First => self.logs_paused_at = Some(oldest + 1),
            Command::Since => {
                let service = self.logs_service.clone()?;
                self.logs_window = (self.logs_window + 1) % LOG_WINDOWS.len();
                self.logs_paused_at = None;
                return Some(Some(Action::FollowLogs {
                    service,
                    window: LOG_WINDOWS[self.logs_window],
                }));
            }
            Command::SaveLogs => {
                self.logs_service.as_ref()?;
                return Some(Some(Action::SaveLogs));
            }
            _ => return None,
        }
        Some(None)
    }

    fn inspect_key(&mut self, key: KeyEvent, mut pane: Pane, model: &Model) {
        let page = super::view::inspect_rows(self.screen_height);
        // The clock only changes ages within lines, never how many.
        let lines = super::inspect::lines(model, &pane.object, pane.json, 0).len();
        let last_page = lines.saturating_sub(page);
        if key.code == KeyCode::Char('y') {
            pane.json = !pane.json;
            pane.scroll = 0;
        } else if key.code == KeyCode::Char(' ') {
            pane.scroll += page;
        } else {
            match self.keymap.command(&key, self.view) {
                Some(Command::Back | Command::Quit) => return,
                Some(Command::Help) => {
                    self.mode = Mode::Help { over: Some(pane) };
                    return;
                }
                Some(Command::Down) => pane.scroll += 1,
                Some(Command::Up) => pane.scroll = pane.scroll.saturating_sub(1),
                Some(Command::PageDown) => pane.scroll += page,
                Some(Command::PageUp) => pane.scroll = pane.scroll.saturating_sub(page),
                Some(Command::First) => pane.scroll = 0,
                Some(Command::Last) => pane.scroll = last_page,
                _ => {}
            }
        }
        pane.scroll = pane.scroll.min(last_page);
        self.mode = Mode::Inspect(pane);
    }

    fn form_key(&mut self, key: KeyEvent, mut form: UpdateForm) -> Option<Action> {
        match key.code {
            KeyCode::Esc => {
                self.status = Some(("update cancelled".into(), false));
                return None;
            }
            KeyCode::Enter => match form.validate() {
                Ok(rollout) => {
                    return Some(Action::Update {
                        service: form.service,
                        rollout,
                    });
                }
                Err((field, message)) => {
                    form.focus = field;
                    form.error = Some((field, message));
                }
            },
            KeyCode::Tab | KeyCode::Down => form.focus = form.focus.step(1),
            KeyCode::BackTab | KeyCode::Up => form.focus = form.focus.step(-1),
            KeyCode::Left => form.choose(-1),
            KeyCode::Right | KeyCode::Char(' ') if form.text_mut().is_none() => form.choose(1),
            KeyCode::Backspace => {
                if let Some(text) = form.text_mut() {
                    text.pop();
                }
            }
            KeyCode::Char(c) => {
                if let Some(text) = form.text_mut() {
                    text.push(c);
                }
            }
            _ => {}
        }
        self.mode = Mode::UpdateForm(form);
        None
    }

    fn inspect(&mut self, object: Object) {
        self.mode = Mode::Inspect(Pane {
            object,
            json: false,
            scroll: 0,
        });
    }

    fn follow_logs(&mut self, service: String) -> Option<Action> {
        self.logs_service = Some(service.clone());
        self.logs_paused_at = None;
        self.switch(View::Logs);
        Some(Action::FollowLogs {
            service,
            window: LOG_WINDOWS[self.logs_window],
        })
    }

    /// Commands on the selected (or marked) nodes, services and tasks.
    fn object_command(&mut self, command: Command, model: &Model) -> Option<Action> {
        let id = self.selected_id(model)?;
        let targets = self.targets(model);
        let each_target = |make: &dyn Fn(String) -> Action| {
            Action::many(targets.iter().cloned().map(make).collect())
        };
        match (self.view, command) {
            (View::Services, Command::Open) => {
                self.focus_service = Some(id);
                self.focus_node = None;
                self.switch(View::Tasks);
                self.set_selected(0);
            }
            (View::Services, Command::Inspect) => self.inspect(Object::Service(id)),
            (View::Nodes, Command::Open | Command::Inspect) => self.inspect(Object::Node(id)),
            (View::Nodes, Command::NodeTasks) => {
                self.focus_node = Some(id);
                self.focus_service = None;
                self.switch(View::Tasks);
                self.set_selected(0);
            }
            (View::Tasks, Command::Open | Command::Inspect) => self.inspect(Object::Task(id)),
            (View::Services, Command::Scale) => {
                let global: Vec<String> = targets
                    .iter()
                    .filter(|id| model.service_is_global(id))
                    .map(|id| model.service_name(id))
                    .collect();
                if !global.is_empty() {
                    self.status = Some((
                        format!(
                            "{} global (one task per node): only replicated services scale",
                            match global.as_slice() {
                                [one] => format!("{one} is"),
                                many => format!("{} are", many.join(", ")),
                            }
                        ),
                        true,
                    ));
                    return None;
                }
                let current = model
                    .services
                    .get(&id)
                    .and_then(|s| s.spec.as_ref())
                    .map_or(0, |s| s.replicas);
                self.mode = Mode::Prompt {
                    kind: PromptKind::Scale { services: targets },
                    input: current.to_string(),
                };
            }
            (View::Services, Command::Logs) => return self.follow_logs(id),
            (View::Tasks, Command::Logs) => {
                let service = model.task(&id).map(|t| t.service_id.clone())?;
                return self.follow_logs(service);
            }
            (View::Problems, Command::Open | Command::Logs) => {
                let problem = super::problems::find(model)
                    .into_iter()
                    .find(|p| p.key() == id)?;
                match (problem.target, command) {
                    (super::problems::Target::Service(service), Command::Logs) => {
                        return self.follow_logs(service);
                    }
                    (_, Command::Logs) => {
                        self.status = Some((
                            "this problem is not about a service: it has no logs".into(),
                            true,
                        ))
                    }
                    (super::problems::Target::Node(_), _) => self.switch(View::Nodes),
                    (super::problems::Target::Service(service), _) => {
                        self.focus_service = Some(service);
                        self.focus_node = None;
                        self.switch(View::Tasks);
                    }
                    (super::problems::Target::Cluster, _) => self.switch(View::Cluster),
                }
            }
            (View::Services, Command::Update) => {
                self.mode = Mode::UpdateForm(UpdateForm::of(&id, model))
            }
            (View::Services, Command::PauseUpdate) => {
                let service = model.services.get(&id)?;
                let state = service
                    .update_status
                    .as_ref()
                    .and_then(|u| pb::UpdateState::try_from(u.state).ok());
                return match state {
                    Some(pb::UpdateState::Updating | pb::UpdateState::RollbackStarted) => {
                        Some(Action::PauseUpdate { service: id })
                    }
                    Some(pb::UpdateState::Paused | pb::UpdateState::RollbackPaused) => {
                        Some(Action::ResumeUpdate { service: id })
                    }
                    _ => {
                        self.status = Some((
                            format!(
                                "{} has no update in progress: U starts one",
                                model.service_name(&id)
                            ),
                            true,
                        ));
                        None
                    }
                };
            }
            (View::Services, Command::Rollback) => {
                self.mode = Mode::Confirm(each_target(&|service| Action::Rollback { service })?)
            }
            (View::Services, Command::Remove) => {
                self.mode =
                    Mode::Confirm(each_target(&|service| Action::RemoveService { service })?)
            }
            (View::Nodes, Command::Activate) => {
                self.marks.clear();
                return each_target(&|node| Action::Availability {
                    node,
                    availability: pb::NodeAvailability::Active,
                });
            }
            (View::Nodes, Command::Pause) => {
                self.marks.clear();
                return each_target(&|node| Action::Availability {
                    node,
                    availability: pb::NodeAvailability::Pause,
                });
            }
            (View::Nodes, Command::Remove) => {
                self.mode = Mode::Confirm(each_target(&|node| Action::RemoveNode { node })?)
            }
            (View::Nodes, Command::Drain) => {
                self.mode = Mode::Confirm(each_target(&|node| Action::Availability {
                    node,
                    availability: pb::NodeAvailability::Drain,
                })?)
            }
            (View::Nodes, Command::Promote) => {
                self.marks.clear();
                return each_target(&|node| Action::Role {
                    node,
                    role: pb::NodeRole::Manager,
                });
            }
            (View::Nodes, Command::Demote) => {
                self.mode = Mode::Confirm(each_target(&|node| Action::Role {
                    node,
                    role: pb::NodeRole::Worker,
                })?)
            }
            _ => {}
        }
        None
    }
}
