//! What the operator is looking at and doing: the current view, the
//! selection, filters, prompts and confirmations. Keys become [`Action`]s
//! here; the key table also feeds the help screen, so the two never
//! disagree.

use std::ops::Range;
use std::time::Duration;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use shoal_proto::v1 as pb;

use super::inspect::Object;
use super::state::Model;

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
    },
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
    /// What the action does, for confirmations and the status line.
    pub fn describe(&self, model: &Model) -> String {
        let service = |id: &str| {
            model
                .services
                .get(id)
                .and_then(|s| s.spec.as_ref())
                .map(|s| s.name.clone())
                .unwrap_or_else(|| id.to_string())
        };
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
            Action::FollowLogs { service: s } => format!("logs of {}", service(s)),
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
    Scale { service: String },
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
    Prompt { kind: PromptKind, input: String },
    Confirm(Action),
    Help,
}

/// One line of the help screen: keys, where they apply, what they do.
pub const KEYS: &[(&str, &str, &str)] = &[
    (
        "1-7 / Tab",
        "any",
        "nodes services tasks logs events cluster problems",
    ),
    (
        ":name",
        "any",
        "jump to a view by name (:nodes, :logs, :pro...)",
    ),
    ("j k / ↓ ↑", "tables", "move the selection"),
    ("g G", "tables", "first / last row (logs: oldest / newest)"),
    ("/", "any", "filter rows or search logs (Esc clears)"),
    ("Enter", "services", "show the service's tasks"),
    ("Enter", "problems", "jump to the object"),
    ("Enter", "nodes/tasks", "inspect the node or task"),
    (
        "i",
        "n/svc/tasks",
        "inspect: pretty, y for JSON, j/k g/G scroll, Esc back",
    ),
    ("l", "services", "follow the service's logs"),
    ("s", "services", "scale"),
    (
        "U",
        "services",
        "update image, parallelism, delay, on-failure, order",
    ),
    (
        "Tab ↑↓ ←→",
        "update form",
        "next/previous field, choose; Enter sends, Esc cancels",
    ),
    ("r", "services", "roll back to the previous spec"),
    ("Ctrl-D", "svc/nodes", "remove (asks first)"),
    ("a p d", "nodes", "activate, pause, drain"),
    ("+ -", "nodes", "promote, demote"),
    ("f t", "logs", "pause/follow, timestamps"),
    ("u", "any", "unlock a locked manager"),
    ("M", "any", "mute or unmute alerts beyond the status line"),
    ("?", "any", "this help"),
    ("q / Ctrl-C", "any", "quit"),
];

pub struct App {
    pub view: View,
    /// Selected row per view.
    pub selected: [usize; 7],
    pub filter: String,
    pub mode: Mode,
    /// The service whose tasks the tasks view shows.
    pub focus_service: Option<String>,
    /// The service whose logs the logs view shows.
    pub logs_service: Option<String>,
    /// Logs view: frozen at this line count (paused), or following.
    pub logs_paused_at: Option<u64>,
    pub logs_timestamps: bool,
    /// The last action's outcome: (text, is error).
    pub status: Option<(String, bool)>,
    pub quit: bool,
    /// The terminal's height at the last frame: the inspect pane scrolls
    /// no further than its last screenful, which depends on it.
    pub screen_height: u16,
}

impl Default for App {
    fn default() -> Self {
        App {
            view: View::Services,
            selected: [0; 7],
            filter: String::new(),
            mode: Mode::Normal,
            focus_service: None,
            logs_service: None,
            logs_paused_at: None,
            logs_timestamps: false,
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
            View::Nodes => model
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
                .map(|(id, _)| id.clone())
                .collect(),
            View::Services => {
                let mut services: Vec<(&String, &pb::Service)> = model.services.iter().collect();
                let name =
                    |s: &pb::Service| s.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                services.sort_by_key(|(_, s)| name(s));
                services
                    .into_iter()
                    .filter(|(_, s)| {
                        filter.is_empty()
                            || keep(format!("{} {}", name(s), super::view::image_of(s)))
                    })
                    .map(|(id, _)| id.clone())
                    .collect()
            }
            View::Tasks => match &self.focus_service {
                Some(service) => self.task_rows(model, service).map(str::to_string).collect(),
                None => Vec::new(),
            },
            View::Events => (0..model.events.len())
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
            Mode::Help => None,
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
                KeyCode::Char('y') | KeyCode::Char('Y') => Some(action),
                _ => {
                    self.status = Some(("cancelled".into(), false));
                    None
                }
            },
        }
    }

    fn submit_prompt(&mut self, kind: PromptKind, input: String) -> Option<Action> {
        match kind {
            PromptKind::Scale { service } => match input.parse::<u64>() {
                Ok(replicas) => Some(Action::Scale { service, replicas }),
                Err(_) => {
                    self.status = Some((format!("{input:?} is not a number of replicas"), true));
                    None
                }
            },
            PromptKind::UnlockKey if !input.is_empty() => Some(Action::Unlock { key: input }),
            _ => None,
        }
    }

    fn normal_key(&mut self, key: KeyEvent, model: &Model) -> Option<Action> {
        let scrolls_logs = matches!(
            key.code,
            KeyCode::Char('j' | 'k' | 'g' | 'G' | 'f' | 't')
                | KeyCode::Up
                | KeyCode::Down
                | KeyCode::Home
                | KeyCode::End
        );
        if self.view == View::Logs && scrolls_logs {
            self.logs_key(key, model);
            return None;
        }
        let rows = self.row_count(model);
        let last = rows.saturating_sub(1);
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Char('/') => self.mode = Mode::Filter,
            KeyCode::Char(':') => self.mode = Mode::Command(String::new()),
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Char(c @ '1'..='7') => {
                let i = c as usize - '1' as usize;
                self.switch(View::ALL[i]);
            }
            KeyCode::Tab => {
                let next = (index(self.view) + 1) % View::ALL.len();
                self.switch(View::ALL[next]);
            }
            KeyCode::BackTab => {
                let next = (index(self.view) + View::ALL.len() - 1) % View::ALL.len();
                self.switch(View::ALL[next]);
            }
            KeyCode::Char('j') | KeyCode::Down => {
                self.set_selected((self.selected() + 1).min(last))
            }
            KeyCode::Char('k') | KeyCode::Up => {
                self.set_selected(self.selected().saturating_sub(1))
            }
            KeyCode::Char('g') | KeyCode::Home => self.set_selected(0),
            KeyCode::Char('G') | KeyCode::End => self.set_selected(last),
            KeyCode::Char('u') => {
                self.mode = Mode::Prompt {
                    kind: PromptKind::UnlockKey,
                    input: String::new(),
                }
            }
            _ => return self.view_key(key, model),
        }
        None
    }

    fn inspect_key(&mut self, key: KeyEvent, mut pane: Pane, model: &Model) {
        let page = super::view::inspect_rows(self.screen_height);
        // The clock only changes ages within lines, never how many.
        let lines = super::inspect::lines(model, &pane.object, pane.json, 0).len();
        let last_page = lines.saturating_sub(page);
        match key.code {
            KeyCode::Esc | KeyCode::Char('q') => return,
            KeyCode::Char('y') => {
                pane.json = !pane.json;
                pane.scroll = 0;
            }
            KeyCode::Char('j') | KeyCode::Down => pane.scroll += 1,
            KeyCode::Char('k') | KeyCode::Up => pane.scroll = pane.scroll.saturating_sub(1),
            KeyCode::PageDown | KeyCode::Char(' ') => pane.scroll += page,
            KeyCode::PageUp => pane.scroll = pane.scroll.saturating_sub(page),
            KeyCode::Char('g') | KeyCode::Home => pane.scroll = 0,
            KeyCode::Char('G') | KeyCode::End => pane.scroll = last_page,
            _ => {}
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

    fn logs_key(&mut self, key: KeyEvent, model: &Model) {
        match key.code {
            KeyCode::Char('f') => {
                self.logs_paused_at = match self.logs_paused_at {
                    Some(_) => None,
                    None => Some(model.logs_received),
                }
            }
            KeyCode::Char('t') => self.logs_timestamps = !self.logs_timestamps,
            KeyCode::Char('G') | KeyCode::End => self.logs_paused_at = None,
            KeyCode::Char('k') | KeyCode::Up => {
                let at = self.logs_paused_at.unwrap_or(model.logs_received);
                self.logs_paused_at = Some(at.saturating_sub(1).max(1));
            }
            KeyCode::Char('j') | KeyCode::Down => {
                if let Some(at) = self.logs_paused_at {
                    self.logs_paused_at = (at + 1 < model.logs_received).then_some(at + 1);
                }
            }
            KeyCode::Char('g') | KeyCode::Home => {
                let oldest = model.logs_received - model.logs.len() as u64;
                self.logs_paused_at = Some(oldest + 1);
            }
            _ => {}
        }
    }

    fn view_key(&mut self, key: KeyEvent, model: &Model) -> Option<Action> {
        let id = self.selected_id(model)?;
        match (self.view, key.code) {
            (View::Services, KeyCode::Enter) => {
                self.focus_service = Some(id);
                self.switch(View::Tasks);
                self.set_selected(0);
            }
            (View::Services, KeyCode::Char('i')) => self.inspect(Object::Service(id)),
            (View::Nodes, KeyCode::Enter | KeyCode::Char('i')) => self.inspect(Object::Node(id)),
            (View::Tasks, KeyCode::Enter | KeyCode::Char('i')) => self.inspect(Object::Task(id)),
            (View::Services, KeyCode::Char('s')) => {
                let current = model
                    .services
                    .get(&id)
                    .and_then(|s| s.spec.as_ref())
                    .map_or(0, |s| s.replicas);
                self.mode = Mode::Prompt {
                    kind: PromptKind::Scale { service: id },
                    input: current.to_string(),
                };
            }
            (View::Services, KeyCode::Char('l')) => {
                self.logs_service = Some(id.clone());
                self.logs_paused_at = None;
                self.switch(View::Logs);
                return Some(Action::FollowLogs { service: id });
            }
            (View::Problems, KeyCode::Enter) => {
                let problem = super::problems::find(model)
                    .into_iter()
                    .find(|p| p.key() == id)?;
                match problem.target {
                    super::problems::Target::Node(_) => self.switch(View::Nodes),
                    super::problems::Target::Service(service) => {
                        self.focus_service = Some(service);
                        self.switch(View::Tasks);
                    }
                    super::problems::Target::Cluster => self.switch(View::Cluster),
                }
            }
            (View::Services, KeyCode::Char('U')) => {
                self.mode = Mode::UpdateForm(UpdateForm::of(&id, model))
            }
            (View::Services, KeyCode::Char('r')) => {
                self.mode = Mode::Confirm(Action::Rollback { service: id })
            }
            (View::Services, KeyCode::Char('d'))
                if key.modifiers.contains(KeyModifiers::CONTROL) =>
            {
                self.mode = Mode::Confirm(Action::RemoveService { service: id })
            }
            (View::Nodes, KeyCode::Char('a')) => {
                return Some(Action::Availability {
                    node: id,
                    availability: pb::NodeAvailability::Active,
                });
            }
            (View::Nodes, KeyCode::Char('p')) => {
                return Some(Action::Availability {
                    node: id,
                    availability: pb::NodeAvailability::Pause,
                });
            }
            (View::Nodes, KeyCode::Char('d')) if key.modifiers.contains(KeyModifiers::CONTROL) => {
                self.mode = Mode::Confirm(Action::RemoveNode { node: id })
            }
            (View::Nodes, KeyCode::Char('d')) => {
                self.mode = Mode::Confirm(Action::Availability {
                    node: id,
                    availability: pb::NodeAvailability::Drain,
                })
            }
            (View::Nodes, KeyCode::Char('+')) => {
                return Some(Action::Role {
                    node: id,
                    role: pb::NodeRole::Manager,
                });
            }
            (View::Nodes, KeyCode::Char('-')) => {
                self.mode = Mode::Confirm(Action::Role {
                    node: id,
                    role: pb::NodeRole::Worker,
                })
            }
            _ => {}
        }
        None
    }
}
