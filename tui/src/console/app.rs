//! What the operator is looking at and doing: the current view, the
//! selection, filters, prompts and confirmations. Keys become [`Action`]s
//! here; the key table also feeds the help screen, so the two never
//! disagree.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use shoal_proto::v1 as pb;

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
    UpdateImage {
        service: String,
        image: String,
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
            Action::UpdateImage { service: s, image } => {
                format!("update {} to image {image}", service(s))
            }
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

#[derive(Clone, Debug, PartialEq)]
pub enum PromptKind {
    Scale { service: String },
    Image { service: String },
    UnlockKey,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Normal,
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
        "views: nodes services tasks logs events cluster problems",
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
    ("l", "services", "follow the service's logs"),
    ("s", "services", "scale"),
    ("U", "services", "rolling update to a new image"),
    ("r", "services", "roll back to the previous spec"),
    ("Ctrl-D", "svc/nodes", "remove (asks first)"),
    ("a p d", "nodes", "activate, pause, drain"),
    ("+ -", "nodes", "promote, demote"),
    ("f t", "logs", "pause/follow, timestamps"),
    ("u", "any", "unlock a locked manager"),
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
    last_bell: Option<std::time::Instant>,
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
            last_bell: None,
        }
    }
}

fn index(view: View) -> usize {
    View::ALL.iter().position(|v| *v == view).unwrap_or(0)
}

impl App {
    /// Whether an alert may ring the bell now; records it if so.
    pub fn bell_due(&mut self, now: std::time::Instant) -> bool {
        let due = self
            .last_bell
            .is_none_or(|last| now.duration_since(last) >= std::time::Duration::from_secs(30));
        if due {
            self.last_bell = Some(now);
        }
        due
    }

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

    /// Row ids of the current view, filtered, in display order.
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
                    keep(format!(
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
                Some(service) => model
                    .tasks_of(service)
                    .into_iter()
                    .filter(|t| {
                        filter.is_empty()
                            || keep(format!("{} {}", t.service_name, model.hostname(&t.node_id)))
                    })
                    .filter_map(|t| t.meta.as_ref().map(|m| m.id.clone()))
                    .collect(),
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

    fn selected_id(&self, model: &Model) -> Option<String> {
        let rows = self.rows(model);
        rows.get(self.selected().min(rows.len().saturating_sub(1)))
            .cloned()
    }

    /// Handles a key; returns an action to send when one is ready.
    pub fn on_key(&mut self, key: KeyEvent, model: &Model) -> Option<Action> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return None;
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.normal_key(key, model),
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
            PromptKind::Image { service } if !input.is_empty() => Some(Action::UpdateImage {
                service,
                image: input,
            }),
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
        let rows = self.rows(model).len();
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
                let image = model
                    .services
                    .get(&id)
                    .map(super::view::image_of)
                    .unwrap_or_default();
                self.mode = Mode::Prompt {
                    kind: PromptKind::Image { service: id },
                    input: image,
                };
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
